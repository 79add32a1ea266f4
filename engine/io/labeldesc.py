"""Class names and colours beside a saved mask, in the formats the field's viewers read (issue #20:
a BrainSeg mask opened in ITK-SNAP as bare numbers).

Beside `NAME.nii.gz` (or `NAME.hdr`):
- `NAME.itksnap.txt`: ITK-SNAP's label description file (Segmentation > Import Label Descriptions):
  `IDX -R- -G- -B- -A-- VIS MSH "LABEL"`;
- `NAME.lut.txt`: a FreeSurfer-style colour table (`No. Label-Name R G B A`), which freeview, 3D
  Slicer (as a colour table) and FSLeyes (File > Load lookup table) read.
The NIfTI header itself says the image is a label map (intent code NIFTI_INTENT_LABEL, 1002), which
FSLeyes uses to show it as one.

Reading a label map back (`remap_by_names`): when a description file beside it names our classes
with other numbers (a mask from another tool that calls white matter 1), the values are mapped to
ours by name and the caller says so; names we do not know are reported, values left as they are.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from engine.core.atomic import atomic_write

INTENT_LABEL = 1002  # NIFTI_INTENT_LABEL
BRAIN_MASK_CLASSES = [(0, "Background", (0, 0, 0)), (1, "Intracranial", (0, 200, 255))]  # brain extraction


def sidecar_paths(mask_path: str | os.PathLike) -> tuple[Path, Path]:
    """(ITK-SNAP description file, FreeSurfer-style LUT) beside a mask file."""
    p = Path(mask_path)
    name = p.name
    for ext in (".nii.gz", ".nii", ".hdr", ".img"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return p.with_name(f"{name}.itksnap.txt"), p.with_name(f"{name}.lut.txt")


def default_classes() -> list[tuple[int, str, tuple[int, int, int]]]:
    from engine.core.classes import tissue_classes

    return [(tc.value, tc.name, tuple(int(v) for v in tc.rgb)) for tc in tissue_classes()]


def write_descriptions(mask_path: str | os.PathLike, classes=None) -> list[Path]:
    """Write both description files beside `mask_path` (atomically); returns them. `classes`:
    [(value, name, (r, g, b))], default the tissue classes."""
    classes = list(classes or default_classes())
    itk, lut = sidecar_paths(mask_path)
    lines = ["################################################",
             "# ITK-SNAP Label Description File (written by BrainSeg)",
             "# Columns: IDX -R- -G- -B- -A-- VIS MSH LABEL",
             "################################################"]
    for value, name, rgb in classes:
        alpha, vis = (0, 0) if value == 0 else (1, 1)
        lines.append(f'{value:5d} {rgb[0]:5d} {rgb[1]:5d} {rgb[2]:5d} {alpha:8.2f} {vis:2d} {vis:2d}    "{name}"')
    fs = ["# FreeSurfer-style colour table (written by BrainSeg): No. Label-Name R G B A"]
    for value, name, rgb in classes:
        fs.append(f"{value:<4d} {re.sub(r'[^A-Za-z0-9_-]+', '-', name):<24s} {rgb[0]:3d} {rgb[1]:3d} {rgb[2]:3d} 0")
    atomic_write(itk, lambda tmp: tmp.write_text("\n".join(lines) + "\n", encoding="utf-8"))
    atomic_write(lut, lambda tmp: tmp.write_text("\n".join(fs) + "\n", encoding="utf-8"))
    return [itk, lut]


def read_descriptions(mask_path: str | os.PathLike) -> dict[int, str] | None:
    """{value: name} from the ITK-SNAP file beside a mask (else the LUT), or None when neither is there."""
    itk, lut = sidecar_paths(mask_path)
    out: dict[int, str] = {}
    if itk.exists():
        for line in itk.read_text(encoding="utf-8", errors="replace").splitlines():
            m = re.match(r'\s*(\d+)\s+\d+\s+\d+\s+\d+\s+[\d.]+\s+\d+\s+\d+\s+"(.*)"', line)
            if m:
                out[int(m.group(1))] = m.group(2)
        return out
    if lut.exists():
        for line in lut.read_text(encoding="utf-8", errors="replace").splitlines():
            m = re.match(r"\s*(\d+)\s+(\S+)\s+\d+\s+\d+\s+\d+", line)
            if m:
                out[int(m.group(1))] = m.group(2).replace("-", " ")
        return out
    return None


def _norm(name: str) -> str:
    n = re.sub(r"[^a-z]", "", name.lower())
    return {"greymatter": "gm", "graymatter": "gm", "whitematter": "wm", "cerebrospinalfluid": "csf",
            "clearlabel": "background", "background": "background", "csf": "csf", "gm": "gm", "wm": "wm"}.get(n, n)


def remap_by_names(labels: np.ndarray, names: dict[int, str]) -> tuple[np.ndarray, str]:
    """Map a label map's values to ours by the names its description file gives them. Returns the
    labels (the same array when nothing changes) and a sentence for the user ('' when nothing to
    say)."""
    ours = {_norm(n): v for v, n, _ in default_classes()}
    ours.update({"background": 0})
    mapping, unknown = {}, []
    for value, name in names.items():
        key = _norm(name)
        if key in ours:
            mapping[value] = ours[key]
        elif np.any(labels == value):
            unknown.append(f"{value} ({name})")
    note = ""
    if any(v != t for v, t in mapping.items()):
        out = labels.copy()
        for v, t in mapping.items():
            out[labels == v] = t
        moved = ", ".join(f"{names[v]} {v}->{t}" for v, t in mapping.items() if v != t)
        labels, note = out, f"values mapped to BrainSeg's classes by the names in its description file ({moved})"
    if unknown:
        note = (note + "; " if note else "") + f"classes BrainSeg does not know, left as they are: {', '.join(unknown)}"
    return labels, note
