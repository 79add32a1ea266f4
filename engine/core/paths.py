"""Where BrainSeg finds its bundled resources and keeps its per-user data."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # engine/core/paths.py -> the checkout


def _resources() -> Path:
    """The bundled resources: the checkout's top-level resources/ folder, which a built wheel or a
    plain `pip install .` carries as the package `brainseg_resources` (setup.cfg package_dir)."""
    checkout = PACKAGE_ROOT / "resources"
    if (checkout / "colors.json").exists():
        return checkout
    try:
        import brainseg_resources
    except ImportError:
        return checkout  # errors name the missing file below it
    return Path(brainseg_resources.__file__).resolve().parent


RESOURCES = _resources()
DEMO_SCAN = RESOURCES / "demo" / "demo_t88_masked_gfc.hdr"
DEMO_LABELS = RESOURCES / "demo" / "demo_t88_masked_gfc_fseg.hdr"
WEIGHTS_DIR = RESOURCES / "weights"


def data_dir() -> Path:
    """Per-user data folder (models, recovery files, logs); BRAINSEG_HOME overrides it."""
    base = os.environ.get("BRAINSEG_HOME")
    if base:
        path = Path(base)
    else:
        xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        path = Path(xdg) / "brainseg"
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # recovery files and fine-tuned models of patients' scans: the user's only
    return path
