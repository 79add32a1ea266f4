"""DICOM series: find them in a folder, read one into a volume with its geometry.

Reader: pydicom (pure Python, pinned 2.4.4, reads every uncompressed transfer syntax and
deflate; JPEG/JPEG 2000/RLE need a pixel-data handler that is not installed, which is said as
such). Chosen over SimpleITK (a 50 MB binary wheel whose ImageSeriesReader hides the checks we
want to report: missing slices, uneven spacing, mixed orientations) and over dicom2nifti /
dcm2niix (whole-folder converters writing files, where we want one series in memory with our own
error messages).

Geometry (DICOM PS3.3 C.7.6.2): ImageOrientationPatient gives the direction of a row (along
which the column index increases) and of a column; PixelSpacing is (between rows, between
columns); slices are sorted along the normal (row x column) by ImagePositionPatient projected
on it. DICOM's patient space is LPS; the affine returned is RAS (NIfTI's), so x and y flip sign.
Array axes: [column index, row index, slice], i.e. x along a row as NIfTI converters lay it out.

Privacy: nothing from the patient module (name, ID, birth date) is read into the volume or
logged; a series is named by its folder, series number and description.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# image storage SOP classes without pixel data or not images: skipped with a count
NOT_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "basic text SR", "1.2.840.10008.5.1.4.1.1.88.22": "enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "comprehensive SR", "1.2.840.10008.5.1.4.1.1.11.1": "presentation state",
    "1.2.840.10008.5.1.4.1.1.104.1": "encapsulated PDF", "1.2.840.10008.5.1.4.1.1.66": "raw data",
}
SPACING_TOLERANCE = 0.01  # relative deviation of slice spacing accepted as even
ORIENTATION_TOLERANCE = 1e-3


class DicomError(Exception):
    """A DICOM problem; the message names the folder or file and what is wrong."""


class SeriesChoiceNeeded(DicomError):
    """Several image series in one folder: the caller must choose one (`series=` UID)."""

    def __init__(self, folder: Path, series: list["SeriesInfo"]):
        self.folder, self.series = folder, series
        lines = "; ".join(s.describe() for s in series)
        super().__init__(f"{folder}: holds {len(series)} image series, choose one (--series UID): {lines}")


@dataclass
class SeriesInfo:
    uid: str
    number: str
    description: str
    modality: str
    files: list[Path] = field(default_factory=list)
    rows: int = 0
    cols: int = 0

    def describe(self) -> str:
        desc = f" {self.description}" if self.description else ""
        return f"series {self.number or '?'}{desc} ({self.modality or '?'}, {len(self.files)} images) UID {self.uid}"


SHEAR_TOLERANCE_MM = 0.1  # in-plane drift of slice positions a volume may have


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file (128-byte preamble + 'DICM'), or a .dcm file."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() == ".dcm"


_HEADERS: dict = {}  # (path, size, mtime) -> header dataset: each header is read once per process
_HEADERS_MAX = 20000


def _dcmread(path: Path, header_only: bool):
    """Read a DICOM object. Headers are cached per process (issue #20: a glob over a series' files
    read every header once per file - 3,600 reads for 60 slices); a changed file is read again."""
    import pydicom

    if not header_only:
        return pydicom.dcmread(str(path), stop_before_pixels=False, force=path.suffix.lower() == ".dcm")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    ds = _HEADERS.get(key)
    if ds is None:
        if len(_HEADERS) >= _HEADERS_MAX:
            _HEADERS.clear()
        ds = _HEADERS[key] = pydicom.dcmread(str(path), stop_before_pixels=True, force=path.suffix.lower() == ".dcm")
    return ds


def find_series(folder: Path) -> tuple[list[SeriesInfo], int]:
    """Image series in a folder (not recursive), and how many DICOM objects were skipped as not
    images (reports, presentation states...)."""
    from pydicom.errors import InvalidDicomError

    series: dict[str, SeriesInfo] = {}
    skipped = 0
    for p in sorted(folder.iterdir()):
        if not p.is_file() or not is_dicom_file(p):
            continue
        try:
            ds = _dcmread(p, header_only=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            log.warning("skipping %s: not readable as DICOM (%s)", p.name, exc)
            skipped += 1
            continue
        sop = str(getattr(ds, "SOPClassUID", ""))
        if sop in NOT_IMAGES or "Rows" not in ds:
            skipped += 1
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "unknown"))
        info = series.get(uid)
        if info is None:
            info = series[uid] = SeriesInfo(uid, str(getattr(ds, "SeriesNumber", "") or ""),
                                            str(getattr(ds, "SeriesDescription", "") or ""),
                                            str(getattr(ds, "Modality", "") or ""), [], int(ds.Rows), int(ds.Columns))
        info.files.append(p)
    return sorted(series.values(), key=lambda s: (s.number.zfill(6), s.uid)), skipped


def resolve(path: str | os.PathLike, series: str | None = None) -> tuple[Path, SeriesInfo]:
    """The folder and series a path stands for: a folder (its only image series, or `series`),
    or one file of a series (that file's series)."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    found, skipped = find_series(folder)
    if not found:
        extra = f" ({skipped} DICOM objects that are not images)" if skipped else ""
        raise DicomError(f"{folder}: a directory without any DICOM image series{extra}; open a scan file "
                         "(.nii, .nii.gz, .hdr/.img) or a DICOM series folder")
    if series:
        match = [s for s in found if s.uid == series or s.number == series]
        if not match:
            raise DicomError(f"{folder}: no series {series}; found: " + "; ".join(s.describe() for s in found))
        return folder, match[0]
    if p.is_file():
        for s in found:
            if any(f.resolve() == p.resolve() for f in s.files):
                return folder, s
        raise DicomError(f"{p}: not an image of a DICOM series")
    if len(found) > 1:
        raise SeriesChoiceNeeded(folder, found)
    return folder, found[0]


def read_series(path: str | os.PathLike, series: str | None = None):
    """(data [col, row, slice] float32 after rescale, RAS affine, source dtype, display name,
    the series' files sorted by name)."""
    folder, info = resolve(path, series)
    items = []
    for f in info.files:
        ds = _dcmread(f, header_only=False)
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise DicomError(f"{f}: a multi-frame (enhanced) DICOM object; convert it to NIfTI (dcm2niix) first")
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if tag not in ds:
                raise DicomError(f"{f}: has no {tag}; its position in space is unknown")
        items.append((f, ds))
    iop = np.array([float(v) for v in items[0][1].ImageOrientationPatient], np.float64)
    for f, ds in items[1:]:
        other = np.array([float(v) for v in ds.ImageOrientationPatient], np.float64)
        if np.abs(other - iop).max() > ORIENTATION_TOLERANCE:
            raise DicomError(f"{folder}: series {info.number} mixes slice orientations ({f.name} differs from "
                             f"{items[0][0].name}); a volume needs one orientation")
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    pos = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in items])
    dist = pos @ normal
    order = np.argsort(dist)
    items = [items[i] for i in order]
    dist = dist[order]
    # the slices must lie along the normal: a position that drifts in-plane (a sheared series, or a
    # gantry tilt - rare in MR) would be placed wrongly by a volume's affine, silently (issue #20:
    # 0.3 mm per slice came out 11.7 mm off at the far end)
    spos = pos[order]
    inplane = (spos - spos[0]) - np.outer(dist - dist[0], normal)
    drift = np.linalg.norm(inplane, axis=1)
    if len(items) > 1 and drift.max() > SHEAR_TOLERANCE_MM:
        per = drift[-1] / max(len(items) - 1, 1)
        raise DicomError(f"{folder}: series {info.number}: slice positions drift {drift.max():.2f} mm off the "
                         f"slice normal ({per:.2f} mm per slice; a sheared or gantry-tilted series): as one "
                         "volume it would be distorted. Resample it with dcm2niix (which corrects gantry tilt) "
                         "and open the NIfTI")
    if len(items) > 1:
        gaps = np.diff(dist)
        if np.any(gaps < 1e-3):
            dup = items[int(np.argmin(gaps)) + 1][0].name
            raise DicomError(f"{folder}: two images at the same position ({dup}); the series holds duplicates or "
                             "several volumes")
        step = float(np.median(gaps))
        worst = int(np.argmax(np.abs(gaps - step)))
        if abs(gaps[worst] - step) > SPACING_TOLERANCE * step:
            missing = int(round(gaps[worst] / step)) - 1
            a, b = sorted((items[worst][0].name, items[worst + 1][0].name))
            where = f"between {a} and {b}"
            if missing >= 1:
                raise DicomError(f"{folder}: {missing} slice(s) missing {where} (gap {gaps[worst]:.2f} mm, "
                                 f"spacing {step:.2f} mm)")
            raise DicomError(f"{folder}: uneven slice spacing {where} ({gaps[worst]:.2f} mm against "
                             f"{step:.2f} mm elsewhere)")
    else:
        step = float(getattr(items[0][1], "SliceThickness", 1.0) or 1.0)
    slices, dtype = [], ""
    for f, ds in items:
        try:
            arr = ds.pixel_array
        except Exception as exc:  # compressed without a handler, or broken pixel data
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(ts, "name", str(ts))
            raise DicomError(f"{f}: pixel data in transfer syntax {name} cannot be decoded here "
                             f"({type(exc).__name__}); convert the series to uncompressed DICOM or NIfTI") from exc
        if arr.shape != (info.rows, info.cols):
            raise DicomError(f"{f}: image is {arr.shape[0]}x{arr.shape[1]}, others are {info.rows}x{info.cols}")
        dtype = str(arr.dtype)
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
        slices.append(arr.astype(np.float32) * slope + inter)
    vol = np.stack(slices, axis=-1)  # [row, col, slice]
    vol = np.ascontiguousarray(np.transpose(vol, (1, 0, 2)))  # [col, row, slice]
    dr, dc = (float(v) for v in items[0][1].PixelSpacing)  # between rows, between columns
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc  # column index runs along a row
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = normal * step
    lps[:3, 3] = pos[order[0]]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    desc = f" {info.description}" if info.description else ""
    name = f"{folder.name} (series {info.number or '?'}{desc})"
    return vol, affine, dtype, name, sorted(info.files), info.number
