"""Where BrainSeg finds its bundled resources and keeps its per-user data."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
RESOURCES = PACKAGE_ROOT / "resources"
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
    path.mkdir(parents=True, exist_ok=True)
    return path
