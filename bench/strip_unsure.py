"""Calibrate brain extraction's 'unsure' signals (engine/infer/strip.py assess()) on proxy heads and
on the failure cases the issue names: a defaced scan, a field of view that cuts the brain, a non-T1
contrast. Prints each case's intracranial volume, shell uncertainty, edge voxels and the reasons.

    python -m bench.strip_unsure [--smoke]

--smoke (tests/bench): synthetic phantom heads (bench/common.py) in place of the wheel heads, every
case built, the first two and the last (noise) extracted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def phantom_sources() -> dict:
    """build_sources()'s keys used here, from synthetic phantom heads on its 2 mm grid."""
    from strip_data import N, grid_affine

    from bench.common import phantom_head

    out = {"affine": grid_affine()}
    for key, seed in (("pyd", 0), ("rob", 1)):
        img, mask, _ = phantom_head((N, N, N), 2.0, seed=seed)
        out[key], out[f"{key}_ic"] = img / np.percentile(img[mask], 98), mask
    return out


def cases(src: dict | None = None):
    from strip_data import build_sources, raw_like

    src = src or build_sources()
    pyd, ic = src["pyd"].astype(np.float32), src["pyd_ic"].astype(bool)
    rob = src["rob"].astype(np.float32)
    out = {"pydeface head (validation)": pyd, "pydeface RAW-like": raw_like(pyd, ic)[0],
           "ROBEX head (training)": rob}
    defaced = pyd.copy()
    ys = np.where(ic.any((0, 2)))[0]
    zs = np.where(ic.any((0, 1)))[0]
    yy, zz = np.arange(128)[None, :, None], np.arange(128)[None, None, :]
    defaced[np.broadcast_to((yy > ys.min() + 0.6 * (ys.max() - ys.min())) & (zz < zs.min() + 0.45 * (zs.max() - zs.min())),
                            defaced.shape)] = 0
    out["pydeface defaced (face and orbits removed)"] = defaced
    cut = pyd.copy()
    cut[:, :, zs.max() - 15:] = 0
    out["pydeface, field of view cuts the top 30 mm"] = cut
    head = pyd > 0.08 * pyd.max()
    t2 = np.where(head, np.clip(1.6 - pyd, 0, None), 0).astype(np.float32)
    out["pydeface, inverted contrast (T2-like)"] = t2
    out["noise only"] = np.abs(np.random.default_rng(0).normal(0, 1, pyd.shape)).astype(np.float32)
    return out, src["affine"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from bench.common import add_smoke_flag, start_smoke

    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        start_smoke("strip_unsure")
    from engine.core.mx_env import configure_threads

    configure_threads()
    from engine.infer.strip import BrainExtractor

    ex = BrainExtractor()
    data, aff = cases(phantom_sources() if args.smoke else None)
    if args.smoke:
        names = list(data)
        data = {k: data[k] for k in names[:2] + names[-1:]}
    print("| case | mL | shell uncertain | edge voxels | outline bare | unsure because |\n|---|---:|---:|---:|---:|---|")
    for name, vol in data.items():
        r = ex.extract(vol, aff)
        print(f"| {name} | {r.volume_ml:,.0f} | {r.shell_uncertain:.3f} | {r.edge_voxels} | {r.bare_fraction:.3f} | "
              f"{'; '.join(r.unsure_reasons) or '-'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
