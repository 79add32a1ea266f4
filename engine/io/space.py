"""Native vs atlas space: which scans are registered to an atlas, and OASIS's atlas scaling factor.

A scan registered to an atlas (OASIS-1's ``*_t88_*`` images, a NIfTI whose sform/qform code says
Talairach or MNI, or one the user marks) has had every head scaled to the atlas's size, so volumes
measured on it are "atlas-space mL", not the brain's own. OASIS gives each session an atlas scaling
factor (ASF, Buckner et al. 2004): the volume scaling from native to atlas space, so

    native mL = atlas mL / ASF            eTIV (OASIS) = 1755 mL / ASF

`Space` carries that fact for one volume; `atlas_space_reason` says why a scan is atlas-space.
No Qt here.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from engine.io.volume import Volume

# NIfTI sform/qform codes of atlas spaces (NIFTI_XFORM_TALAIRACH, _MNI_152, _TEMPLATE_OTHER)
ATLAS_XFORM_CODES = {3: "Talairach", 4: "MNI 152", 5: "a template"}
SCANNER_CODE, TALAIRACH_CODE, TEMPLATE_CODE = 1, 3, 5
OASIS_ETIV_CONSTANT_ML = 1755.0  # OASIS: eTIV = 1755 / ASF (the atlas's TIV)
ETIV_LABEL = "eTIV (OASIS, 1755/ASF)"
ATLAS_UNIT, NATIVE_UNIT = "atlas-space mL", "mL"
ASF_RANGE = (0.5, 2.0)  # OASIS-1's ASFs run 0.88-1.59; outside this it is not an ASF
MARKED_REASON = "marked atlas-registered"


def atlas_space_reason(volume: Volume) -> str | None:
    """Why this scan (or a mask of it) is in an atlas's space, or None when it is native."""
    code = getattr(volume, "xform_code", 0)
    if code in ATLAS_XFORM_CODES:
        return f"NIfTI transform code {code} ({ATLAS_XFORM_CODES[code]})"
    name = volume.path.name if volume.path is not None else (volume.display_name or "")
    if "_t88_" in name.lower():
        return "OASIS _t88_ file (Talairach 1988 atlas)"
    if getattr(volume, "atlas_marked", False):  # last: the file's own word comes first
        return MARKED_REASON
    return None


def mask_xform_code(volume: Volume) -> int:
    """The sform/qform code a mask of this scan is saved with: the scan's own when it has one;
    otherwise Talairach for an OASIS _t88_ file, 'template' for one marked atlas-registered, and
    'scanner' (what masks always got) for the rest."""
    code = int(getattr(volume, "xform_code", 0) or 0)
    if code:
        return code
    reason = atlas_space_reason(volume)
    if reason is None:
        return SCANNER_CODE
    return TALAIRACH_CODE if reason.startswith("OASIS") else TEMPLATE_CODE


def check_asf(asf: float) -> float:
    """The ASF as a float, or ValueError naming what is wrong with it."""
    try:
        value = float(asf)
    except (TypeError, ValueError):
        raise ValueError(f"ASF {asf!r} is not a number") from None
    if not math.isfinite(value) or not ASF_RANGE[0] <= value <= ASF_RANGE[1]:
        hint = f" (that looks like an eTIV in mL: ASF = 1755 / eTIV = {1755 / value:.3f})" \
            if math.isfinite(value) and 900 <= value <= 2500 else ""
        raise ValueError(f"ASF {asf}: an atlas scaling factor is near 1 (OASIS-1's run 0.88-1.59; "
                         f"accepted {ASF_RANGE[0]:g}-{ASF_RANGE[1]:g}){hint}")
    return value


def _asf_arg(text: str) -> float:
    try:
        return check_asf(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_space_arguments(parser: argparse.ArgumentParser) -> None:
    """--atlas-space and --asf, as `brainseg stats`, `segment` and `batch` take them."""
    parser.add_argument("--atlas-space", action="store_true",
                        help="the scan is registered to an atlas (OASIS _t88_ files and NIfTI Talairach/MNI "
                        "codes are found without it): volumes are reported as atlas-space mL")
    parser.add_argument("--asf", type=_asf_arg, metavar="X",
                        help="OASIS's atlas scaling factor of an atlas-space scan: also report native mL "
                        "(atlas mL / ASF) and eTIV (OASIS, 1755/ASF)")


@dataclass(frozen=True)
class Space:
    """The space a volume's mL are in: native (reason None) or atlas (reason says why), with
    OASIS's ASF when one is known (atlas only)."""

    reason: str | None = None
    asf: float | None = None

    def __post_init__(self):
        if self.asf is not None:
            if self.reason is None:
                raise ValueError("an ASF converts atlas-space volumes; this volume is native")
            object.__setattr__(self, "asf", check_asf(self.asf))

    @classmethod
    def of(cls, volume: Volume, asf: float | None = None) -> Space:
        return cls(atlas_space_reason(volume), asf)

    @property
    def is_atlas(self) -> bool:
        return self.reason is not None

    @property
    def name(self) -> str:
        return "atlas" if self.is_atlas else "native"

    @property
    def unit(self) -> str:
        return ATLAS_UNIT if self.is_atlas else NATIVE_UNIT

    @property
    def native_known(self) -> bool:
        """Whether native volumes are known: native space, or atlas space with an ASF."""
        return not self.is_atlas or self.asf is not None

    def native_ml(self, ml: float) -> float | None:
        """The native volume of `ml` in this space (None: atlas space without an ASF)."""
        if not self.is_atlas:
            return ml
        return None if self.asf is None else ml / self.asf

    @property
    def etiv_ml(self) -> float | None:
        """OASIS's estimated TIV, 1755 / ASF (None without an ASF)."""
        return None if self.asf is None else OASIS_ETIV_CONSTANT_ML / self.asf

    def describe(self) -> str:
        """'native', 'atlas (why)' or 'atlas (why); ASF 1.2'."""
        if not self.is_atlas:
            return "native"
        return f"atlas ({self.reason})" + ("" if self.asf is None else f"; ASF {self.asf:g}")


def read_oasis_asf(path: str | os.PathLike) -> dict[str, float]:
    """{session id (e.g. OAS1_0001_MR1): ASF} from an OASIS demographics CSV (columns `ID` or
    `MRI ID`, and `ASF`); sessions with an empty ASF are left out. ValueError for a file without
    those columns or with an ASF that is no ASF."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = {(h or "").strip(): h for h in reader.fieldnames or []}
        id_col = fields.get("ID") or fields.get("MRI ID")
        asf_col = fields.get("ASF")
        if not id_col or not asf_col:
            raise ValueError(f"{path}: not an OASIS CSV: needs the columns ID (or MRI ID) and ASF, "
                             f"has {', '.join(fields) or 'none'}")
        out = {}
        for n, row in enumerate(reader, start=2):
            sid, raw = (row.get(id_col) or "").strip(), (row.get(asf_col) or "").strip()
            if not sid or not raw:
                continue
            try:
                out[sid] = check_asf(raw)
            except ValueError as exc:
                raise ValueError(f"{path}: line {n} ({sid}): {exc}") from None
    return out
