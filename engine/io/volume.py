"""Reading and writing scans and label maps: Analyze 7.5 (OASIS-1), headerless OASIS .img, NIfTI.

Everything goes through nibabel except headerless `.img` files, whose layout is inferred from the
file size (the OASIS grids) and reported in `Volume.layout_note`. Any problem raises
`VolumeReadError` naming the file and what is wrong; nothing here ever hangs on bad input.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from engine.core.atomic import atomic_write, fsync_dir, fsync_file
from engine.core.classes import CLASS_KEYS, NUM_CLASSES

log = logging.getLogger(__name__)

OASIS_SHAPE = (176, 208, 176)
_N = int(np.prod(OASIS_SHAPE))
# Headerless layouts we recognise, by file size. The seed tutorial wrote images as >u2.
HEADERLESS_LAYOUTS = {
    _N * 2: ("image", np.dtype(">i2"), "OASIS-1 image: 176x208x176 big-endian int16"),
    _N: ("labels", np.dtype("u1"), "OASIS-1 FSL_SEG labels: 176x208x176 uint8"),
}

# Analyze 7.5 has no orientation field. OASIS-1 files are stored LAS (x runs from the patient's
# right to left: radiological), which is also nibabel's default Analyze affine; we assume it.
ANALYZE_ASSUMPTION = ("Analyze 7.5 stores no orientation: assumed LAS (the OASIS-1 convention, "
                      "x from the patient's right to left)")

LABEL_SUFFIXES = ("fseg", "seg", "label", "labels", "mask")


class VolumeReadError(Exception):
    """A file could not be read as a volume. The message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SeriesChoiceError(VolumeReadError):
    """A folder holds several DICOM image series: the caller chooses one (`series=`). `.series`
    lists them (engine.io.dicom.SeriesInfo)."""

    def __init__(self, path, series: list):
        self.series = series
        super().__init__(path, f"holds {len(series)} image series, choose one (--series UID or number): "
                               + "; ".join(s.describe() for s in series))


class VolumeWriteError(Exception):
    """A volume could not be written; the previous file (if any) is left intact."""


@dataclass
class Volume:
    """One 3-D scan or label map with its geometry.

    `data` is float32 for scans and uint8 for label maps, indexed [x, y, z] as stored; axial slices
    are `data[:, :, k]` (the third array axis, as OASIS stores them).
    """

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    kind: str = "image"  # "image" or "labels"
    source_dtype: str = ""
    layout_note: str | None = None  # set when the layout had to be assumed (headerless .img)
    # set when the orientation is an assumption, not a fact (Analyze 7.5 stores none), or was
    # found from the anatomy (engine/io/anatomy.py)
    geometry_note: str | None = None
    # where the orientation came from: "header" (a real affine), "assumed" or "anatomy"
    orientation_source: str = "header"
    warnings: list[str] = field(default_factory=list)
    source: str = ""  # "dicom" for a DICOM series (then `path` is its first image file)
    series_number: str = ""  # a DICOM series' SeriesNumber
    display_name: str | None = None  # how to name it when the file name says little (a DICOM series)
    # the NIfTI sform code, else the qform code, else 0 (Analyze, MGH, DICOM): 3/4 mean Talairach/MNI
    # space (engine/io/space.py); masks of this scan are saved with it (space.mask_xform_code)
    xform_code: int = 0
    atlas_marked: bool = False  # the user says the scan is registered to an atlas (--atlas-space)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def is_labels(self) -> bool:
        return self.kind == "labels"

    @property
    def name(self) -> str:
        if self.display_name:
            return self.display_name
        return self.path.name if self.path else "(unsaved)"


VOLUME_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".img", ".mgz")


def scan_stem(path: str | os.PathLike) -> str:
    """A scan or mask file's name without its format suffix ('x.nii.gz' -> 'x', 'y.hdr' -> 'y')."""
    name = Path(path).name
    for suf in VOLUME_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def files_of(path: str | os.PathLike) -> set[Path]:
    """The files a name stands for, resolved: both halves of an Analyze pair (either case)."""
    p = Path(path)
    if p.suffix.lower() in (".hdr", ".img"):
        files = {p.with_suffix(".hdr"), p.with_suffix(".img"), p.with_suffix(".HDR"), p.with_suffix(".IMG")}
    else:
        files = {p}
    return {f.resolve() for f in files}


def _pair_paths(path: Path) -> tuple[Path, Path]:
    """The .hdr and .img of an Analyze pair, matching the case of the given file's suffix."""
    suffix = path.suffix
    hdr_suffix = ".HDR" if suffix.isupper() else ".hdr"
    img_suffix = ".IMG" if suffix.isupper() else ".img"
    return path.with_suffix(hdr_suffix), path.with_suffix(img_suffix)


def _guess_kind(path: Path, data: np.ndarray) -> str:
    """"labels" for a uint8 file or one named like a label map (LABEL_SUFFIXES) whose values are
    whole numbers 0..NUM_CLASSES-1; otherwise "image". The name and type are checked first and only
    the range is read (min and max): an np.unique over the voxels cost 0.4-0.9 s on every scan opened
    (issue #21, start-up)."""
    stem = path.name.lower()
    if not (data.dtype == np.uint8 or any(s in stem for s in LABEL_SUFFIXES)) or data.size == 0:
        return "image"
    if np.issubdtype(data.dtype, np.integer) or np.all(np.mod(data, 1) == 0):
        if data.min() >= 0 and data.max() < NUM_CLASSES:
            return "labels"
    return "image"


def _default_analyze_affine(shape: tuple[int, ...], zooms=(1.0, 1.0, 1.0)) -> np.ndarray:
    """The affine nibabel gives an Analyze header of this shape (so headerless == paired)."""
    hdr = nib.AnalyzeHeader()
    hdr.set_data_shape(shape[:3])
    hdr.set_zooms(zooms)
    return hdr.get_best_affine()


def _read_headerless(path: Path) -> tuple[np.ndarray, np.ndarray, str, str]:
    size = path.stat().st_size
    if size not in HEADERLESS_LAYOUTS:
        known = ", ".join(f"{n:,} bytes ({d[2]})" for n, d in HEADERLESS_LAYOUTS.items())
        raise VolumeReadError(
            path,
            f"no .hdr beside it and its size ({size:,} bytes) fits no known layout; known: {known}",
        )
    kind, dtype, note = HEADERLESS_LAYOUTS[size]
    raw = np.fromfile(path, dtype=dtype)
    if kind == "image" and raw.min() < 0:
        # OASIS images are non-negative; negative values mean the seed tutorial's unsigned layout.
        raw = raw.view(">u2")
        dtype = np.dtype(">u2")
        note = "seed-tutorial image: 176x208x176 big-endian uint16"
    # Analyze stores x fastest (Fortran order), exactly as the paired file would be read.
    data = raw.reshape(OASIS_SHAPE, order="F")
    note = f"no header found; layout assumed from the file size: {note}"
    log.warning("%s: %s", path, note)
    return data, _default_analyze_affine(OASIS_SHAPE), kind, note


def _check_analyze_size(hdr_path: Path, img_path: Path, img: nib.analyze.AnalyzeImage) -> None:
    header = img.header
    shape = header.get_data_shape()
    itemsize = header.get_data_dtype().itemsize
    expected = int(np.prod(shape)) * itemsize + int(header.get_data_offset())
    actual = img_path.stat().st_size
    if actual < expected:
        raise VolumeReadError(
            img_path,
            f"data file is truncated: header {hdr_path.name} says {'x'.join(map(str, shape))} "
            f"{header.get_data_dtype()} ({expected:,} bytes) but the file holds {actual:,} bytes",
        )
    if actual > expected:
        raise VolumeReadError(
            img_path,
            f"header {hdr_path.name} says {'x'.join(map(str, shape))} {header.get_data_dtype()} "
            f"({expected:,} bytes) but the file holds {actual:,} bytes: header and data disagree",
        )


def read_volume(path: str | os.PathLike, kind: str = "auto", series: str | None = None) -> Volume:
    """Read a scan or label map. `kind` is "auto", "image" or "labels". A DICOM series is read
    from its folder or any of its files (`series`: a SeriesInstanceUID or series number, needed
    when a folder holds several; engine/io/dicom.py).

    Raises VolumeReadError for every kind of bad input (missing, directory, empty, truncated,
    header/data mismatch, unknown layout, NaN/inf, wrong dimensionality, not an image).
    """
    path = Path(path)
    if kind not in ("auto", "image", "labels"):
        raise ValueError(f"kind must be auto, image or labels, not {kind!r}")
    if not path.exists():
        raise VolumeReadError(path, "no such file")
    from engine.io import dicom

    layout_note = None
    geometry_note = None
    img = None  # the nibabel image, when one was read: its sform/qform code is kept (xform_code)
    assumed_from = None  # what the orientation was assumed from, when nothing reliable says it
    source, display_name, series_number = "", None, ""
    suffix = path.suffix.lower()
    if path.is_dir() or dicom.is_dicom_file(path):
        try:
            data, affine, source_dtype, display_name, files, series_number = dicom.read_series(path, series)
        except dicom.SeriesChoiceNeeded as exc:
            raise SeriesChoiceError(exc.folder, exc.series) from exc
        except dicom.DicomError as exc:
            raise VolumeReadError(path, str(exc).replace(f"{path}: ", "", 1)) from exc
        except MemoryError as exc:
            raise VolumeReadError(path, "too large to fit in memory") from exc
        except Exception as exc:
            raise VolumeReadError(path, f"could not be read as DICOM ({type(exc).__name__}: {exc})") from exc
        path = files[0]
        source = "dicom"
        suffix = None
    try:
        if suffix is None:
            pass
        elif suffix in (".hdr", ".img"):
            hdr_path, img_path = _pair_paths(path)
            for p in (hdr_path, img_path):
                if p.exists() and p.stat().st_size == 0:
                    raise VolumeReadError(p, "file is empty")
            repair_analyze_pair(hdr_path)
            if not hdr_path.exists():
                if suffix == ".hdr":
                    raise VolumeReadError(path, "no such file")
                data, affine, guessed, layout_note = _read_headerless(img_path)
                geometry_note = ANALYZE_ASSUMPTION
                assumed_from = "the OASIS convention LAS"
                source_dtype = str(data.dtype)
                if kind == "auto":
                    kind = guessed
            else:
                if not img_path.exists():
                    raise VolumeReadError(img_path, f"the data file of {hdr_path.name} is missing")
                try:
                    img = nib.load(str(hdr_path))
                except Exception as exc:  # nibabel raises many types for junk headers
                    raise VolumeReadError(hdr_path, f"not a valid Analyze/NIfTI header ({exc})") from exc
                _check_analyze_size(hdr_path, img_path, img)
                data, affine, source_dtype = _load_dataobj(path, img)
                if not isinstance(img, nib.Nifti1Pair):  # a NIfTI pair carries its orientation
                    affine, assumed_from, geometry_note = _analyze_orient(img, data.shape, affine)
                elif _no_xform(img):
                    assumed_from = NIFTI_NO_XFORM
        else:
            if path.stat().st_size == 0:
                raise VolumeReadError(path, "file is empty")
            if not (suffix == ".nii" or path.name.lower().endswith(".nii.gz") or suffix == ".mgz"):
                raise VolumeReadError(
                    path, "not a supported scan format (.hdr/.img Analyze, .nii, .nii.gz, .mgz)"
                )
            try:
                img = nib.load(str(path))
            except Exception as exc:
                raise VolumeReadError(path, f"not a readable image ({type(exc).__name__}: {exc})") from exc
            data, affine, source_dtype = _load_dataobj(path, img)
            if _no_xform(img):
                geometry_note = f"{NIFTI_NO_XFORM}: orientation assumed {''.join(nib.aff2axcodes(img.affine))}"
                assumed_from = NIFTI_NO_XFORM
    except VolumeReadError:
        raise
    except MemoryError as exc:
        raise VolumeReadError(path, "too large to fit in memory") from exc
    except Exception as exc:
        raise VolumeReadError(path, f"could not be read ({type(exc).__name__}: {exc})") from exc

    data = _to_3d(path, data)
    if not np.issubdtype(data.dtype, np.integer):
        bad = ~np.isfinite(data)
        if bad.any():
            raise VolumeReadError(path, f"holds {int(bad.sum()):,} NaN or infinite voxels")
    if min(data.shape) < 1:
        raise VolumeReadError(path, f"has an empty dimension (shape {data.shape})")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeReadError(path, "has a degenerate affine (zero voxel size)")
    from engine.io.conform import MAX_VOXEL_MM, MIN_VOXEL_MM

    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    if not np.all((zooms >= MIN_VOXEL_MM) & (zooms <= MAX_VOXEL_MM)):
        raise VolumeReadError(path, f"voxel size {'x'.join(f'{z:g}' for z in zooms)} mm is outside "
                                    f"{MIN_VOXEL_MM:g}-{MAX_VOXEL_MM:g} mm: the header's units or scaling are wrong")
    if kind == "auto":
        kind = _guess_kind(path, data)
    if kind == "labels":
        data = _as_labels(path, data)
    else:
        data = np.ascontiguousarray(data, dtype=np.float32)
    orientation_source = "header"
    anatomy_warning = None
    if assumed_from is not None:
        affine, geometry_note, orientation_source = _orientation_from_anatomy(path, data, affine, kind,
                                                                               assumed_from, geometry_note)
    elif kind == "image" and min(data.shape) >= 24:  # a real affine is kept; warn if the anatomy disagrees
        from engine.io.anatomy import check_affine

        try:
            anatomy_warning = check_affine(data, np.asarray(affine, float))
        except Exception as exc:  # a check, never a reason not to open the file
            log.debug("%s: orientation check failed: %s", path, exc)
        if anatomy_warning:
            log.warning("%s: %s", path, anatomy_warning)
    vol = Volume(data=data, affine=np.asarray(affine, dtype=np.float64), path=path, kind=kind,
                 source_dtype=str(source_dtype), layout_note=layout_note, geometry_note=geometry_note,
                 source=source, display_name=display_name, orientation_source=orientation_source,
                 xform_code=_xform_code(img),
                 series_number=series_number if source == "dicom" else "")
    if anatomy_warning:
        vol.warnings.append(anatomy_warning)
    log.info("read %s: %s %s voxel %s %s%s", path, kind, vol.shape,
             tuple(round(v, 3) for v in vol.voxel_size), vol.orientation,
             f" ({layout_note})" if layout_note else "")
    return vol


NIFTI_NO_XFORM = "NIfTI with qform and sform codes 0 (no orientation stored)"


def _no_xform(img) -> bool:
    hdr = getattr(img, "header", None)
    if not isinstance(hdr, nib.Nifti1Header):
        return False
    return int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0


def _analyze_orient(img, shape, affine) -> tuple[np.ndarray, str, str]:
    """The Analyze 7.5 `orient` field (1-5: coronal, sagittal or flipped) turned into an affine;
    0 means transverse and also unset, so it keeps nibabel's LAS."""
    from engine.io.anatomy import ANALYZE_ORIENT_CODES, ANALYZE_ORIENT_NAMES, affine_from_codes

    try:
        code = int(img.header["orient"])
    except (KeyError, ValueError, TypeError):
        code = 0
    if code in ANALYZE_ORIENT_CODES and code != 0:
        zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
        src = f"the header's orient field ({code}: {ANALYZE_ORIENT_NAMES[code]})"
        codes = "".join(ANALYZE_ORIENT_CODES[code])
        return (affine_from_codes(ANALYZE_ORIENT_CODES[code], zooms, shape), src,
                f"Analyze 7.5: orientation {codes} from {src}, not a full affine")
    return affine, "Analyze's convention LAS (orient field 0: transverse or unset)", ANALYZE_ASSUMPTION


def _orientation_from_anatomy(path, data, affine, kind, assumed_from, note):
    """(affine, note, source): the anatomy's orientation where nothing reliable stored one."""
    from engine.io.anatomy import describe, find_orientation

    probe = data if kind != "labels" else (np.asarray(data) > 0).astype(np.float32)
    try:
        finding = find_orientation(probe, np.asarray(affine, float))
    except Exception as exc:  # never let the check stop a file from opening
        log.warning("%s: orientation check failed (%s); kept %s", path, exc, assumed_from)
        return affine, note, "assumed"
    if finding.changed:
        text = describe(finding, assumed_from)
        log.warning("%s: %s", path, text)
        return finding.corrected_affine(np.asarray(affine, float), data.shape), text, "anatomy"
    log.info("%s: %s", path, describe(finding, assumed_from))
    return affine, note, "assumed"


def _load_dataobj(path: Path, img) -> tuple[np.ndarray, np.ndarray, str]:
    if not hasattr(img, "dataobj"):
        raise VolumeReadError(path, "not a volume image")
    shape = img.shape
    if len(shape) < 3:
        raise VolumeReadError(path, f"is {len(shape)}-D data (shape {shape}); a 3-D volume is needed")
    source_dtype = str(img.get_data_dtype())
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, OSError, ValueError) as exc:
        raise VolumeReadError(path, f"data could not be read: truncated or corrupt ({exc})") from exc
    return data, img.affine, source_dtype


def _xform_code(img) -> int:
    """A NIfTI image's sform code, else its qform code; 0 for formats without them."""
    hdr = getattr(img, "header", None)
    if not isinstance(hdr, nib.Nifti1Header):  # NIfTI-2 headers are Nifti1Header subclasses
        return 0
    try:
        return int(hdr["sform_code"]) or int(hdr["qform_code"])
    except (KeyError, ValueError, TypeError):
        return 0


def _to_3d(path: Path, data: np.ndarray) -> np.ndarray:
    if data.ndim < 3:
        raise VolumeReadError(path, f"is {data.ndim}-D data (shape {data.shape}); a 3-D volume is needed")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim > 3:
        raise VolumeReadError(
            path, f"is {data.ndim}-D data (shape {data.shape}); only 3-D volumes (or 4-D with a "
            "single volume) are supported"
        )
    return data


def _as_labels(path: Path, data: np.ndarray) -> np.ndarray:
    if not np.issubdtype(data.dtype, np.integer):
        if np.any(np.mod(data, 1) != 0):
            raise VolumeReadError(path, "is not a label map: it holds non-integer values")
    lo, hi = float(data.min()), float(data.max())
    if lo < 0 or hi >= NUM_CLASSES:
        raise VolumeReadError(
            path, f"is not a tissue label map: values run {lo:g}..{hi:g}, expected 0..{NUM_CLASSES - 1} "
            "(0 background, 1 CSF, 2 grey matter, 3 white matter)"
        )
    return np.ascontiguousarray(data, dtype=np.uint8)


# ----------------------------------------------------------------------------------- writing
def save_labels(path: str | os.PathLike, labels: np.ndarray, affine: np.ndarray, xform_code: int = 1,
                classes="tissue") -> list[Path]:
    """Write a uint8 label map with the scan's affine. Format from the extension:
    .nii / .nii.gz (NIfTI-1), .hdr / .img (Analyze 7.5 big-endian, 4-D singleton as OASIS FSL_SEG).
    `xform_code` is the NIfTI sform/qform code written with the affine: pass the scan's
    (engine.io.space.mask_xform_code) so a mask of an MNI or Talairach scan says so; Analyze has
    none. NIfTI masks say they are label maps (intent NIFTI_INTENT_LABEL). Beside the mask, the class
    names and colours for ITK-SNAP and FreeSurfer-style viewers (engine/io/labeldesc.py): `classes`
    "tissue" (the four classes), a [(value, name, rgb)] list, or None for none. Every file is written
    atomically. Returns the files written."""
    written = _save_labels(path, labels, affine, xform_code)
    if classes is not None:
        from engine.io.labeldesc import write_descriptions

        try:
            written += write_descriptions(path, None if classes == "tissue" else classes)
        except OSError as exc:
            raise VolumeWriteError(f"{path}: the mask was written, its class descriptions could not be ({exc})") from exc
    return written


def _save_labels(path, labels, affine, xform_code) -> list[Path]:
    path = Path(path)
    labels = np.asarray(labels, dtype=np.uint8)
    name = path.name.lower()
    try:
        if name.endswith(".nii.gz") or name.endswith(".nii"):
            img = nib.Nifti1Image(labels, affine)
            img.header.set_data_dtype(np.uint8)
            img.header.set_xyzt_units("mm")
            img.set_qform(affine, code=int(xform_code))
            img.set_sform(affine, code=int(xform_code))
            img.header.set_intent("label")  # NIFTI_INTENT_LABEL: viewers show it as a label map
            ext = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
            atomic_write(path, lambda tmp: _save_nifti(img, tmp, ext))
            return [path]
        if name.endswith(".hdr") or name.endswith(".img"):
            hdr_path, img_path = _pair_paths(path)
            return _save_analyze(hdr_path, img_path, labels, affine)
    except OSError as exc:
        raise VolumeWriteError(f"{path}: could not be written ({exc})") from exc
    raise VolumeWriteError(f"{path}: unknown output format; use .nii.gz, .nii, .hdr or .img")


def save_image(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, xform_code: int = 1) -> list[Path]:
    """Write a float image (e.g. an uncertainty map) as NIfTI (.nii or .nii.gz), atomically, with the
    sform code `xform_code` (the scan's, as for save_labels)."""
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise VolumeWriteError(f"{path}: images are written as NIfTI; use a .nii or .nii.gz name")
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.set_sform(affine, code=int(xform_code))
    ext = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    atomic_write(path, lambda tmp: _save_nifti(img, tmp, ext))
    return [path]


def _save_nifti(img, tmp: Path, ext: str) -> None:
    # nibabel picks the format (and gzip) from the file name, so write under a proper name first.
    named = tmp.with_name(tmp.name + ext)
    nib.save(img, str(named))
    os.replace(named, tmp)


def _analyze_header(shape4: tuple, affine: np.ndarray) -> nib.AnalyzeHeader:
    header = nib.AnalyzeHeader(endianness=">")
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape4)
    zooms = tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))
    header.set_zooms(zooms + (1.0,))
    return header


def analyze_geometry_loss(affine: np.ndarray, shape: tuple = (2, 2, 2)) -> str | None:
    """Why an Analyze 7.5 file cannot keep this affine (it stores voxel sizes only: orientation
    and origin come from the convention), or None when it can."""
    affine = np.asarray(affine, dtype=np.float64)
    header = _analyze_header(tuple(shape[:3]) + (1,), affine)
    if np.allclose(header.get_best_affine(), affine, atol=1e-4):
        return None
    return (f"Analyze 7.5 cannot store this scan's orientation and origin ({''.join(nib.aff2axcodes(affine))} "
            "axes); the file gets the Analyze default for its voxel size, so other tools may show the "
            "mask flipped or shifted against the scan. Save as NIfTI (.nii.gz) to keep the geometry.")


PAIR_JOURNAL = ".{name}.pair-pending"  # beside an Analyze pair while both halves are being replaced


def _save_analyze(hdr_path: Path, img_path: Path, labels: np.ndarray, affine: np.ndarray) -> list[Path]:
    """Replace an Analyze pair so that a crash at any point leaves a readable pair, old or new:
    both halves are written and flushed under temporary names, then a journal naming them is
    written, then both are renamed into place and the journal removed. `read_volume` finishes a
    journalled replacement it finds (the new halves were complete before the journal existed)."""
    data4 = labels[..., np.newaxis]  # OASIS FSL_SEG files carry a 4th singleton axis
    img = nib.AnalyzeImage(data4, affine, header=_analyze_header(data4.shape, affine))
    loss = analyze_geometry_loss(affine, labels.shape)
    if loss:
        log.warning("%s: %s", hdr_path, loss)
    folder = hdr_path.parent
    tmpdir = Path(tempfile.mkdtemp(prefix=".brainseg-", dir=folder))
    journal = folder / PAIR_JOURNAL.format(name=hdr_path.stem)
    try:
        tmp_hdr = tmpdir / hdr_path.name
        nib.save(img, str(tmp_hdr.with_suffix(".hdr")))
        for p in (tmp_hdr.with_suffix(".hdr"), tmp_hdr.with_suffix(".img")):
            fsync_file(p)
        fsync_dir(tmpdir)
        journal.write_text(json.dumps({"tmpdir": tmpdir.name, "hdr": hdr_path.name, "img": img_path.name}))
        fsync_file(journal)
        fsync_dir(folder)
        os.replace(tmp_hdr.with_suffix(".img"), img_path)
        os.replace(tmp_hdr.with_suffix(".hdr"), hdr_path)
        fsync_dir(folder)
        journal.unlink()
        fsync_dir(folder)
    finally:
        if tmpdir.exists():
            for p in tmpdir.iterdir():
                p.unlink()
            tmpdir.rmdir()
    return [hdr_path, img_path]


def repair_analyze_pair(hdr_path: Path) -> bool:
    """Finish a replacement of this Analyze pair that a crash interrupted (see _save_analyze).
    Returns True when something was repaired."""
    journal = hdr_path.parent / PAIR_JOURNAL.format(name=hdr_path.stem)
    if not journal.exists():
        return False
    try:
        j = json.loads(journal.read_text())
        tmpdir = hdr_path.parent / j["tmpdir"]
    except (ValueError, KeyError, OSError):
        journal.unlink(missing_ok=True)  # written last before the renames: a torn one means none began
        return False
    for suffix, name in ((".img", j["img"]), (".hdr", j["hdr"])):  # as _save_analyze named them
        src = (tmpdir / j["hdr"]).with_suffix(suffix)
        if src.exists():
            os.replace(src, hdr_path.parent / name)
    fsync_dir(hdr_path.parent)
    if tmpdir.exists():
        for p in tmpdir.iterdir():
            p.unlink()
        tmpdir.rmdir()
    journal.unlink()
    log.warning("%s: finished replacing the pair that an earlier save left half done", hdr_path)
    return True


def label_volumes(labels: np.ndarray, voxel_volume_ml: float) -> dict[str, dict[str, float]]:
    """Per class: voxel count, volume in mL and fraction of the intracranial volume (CSF+GM+WM)."""
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=NUM_CLASSES)
    icv = int(counts[1:NUM_CLASSES].sum())
    out = {}
    for value, key in enumerate(CLASS_KEYS):
        n = int(counts[value])
        out[key] = {
            "voxels": n,
            "ml": n * voxel_volume_ml,
            "icv_fraction": (n / icv) if (value > 0 and icv) else None,
        }
    return out
