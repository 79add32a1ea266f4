"""`brainseg batch`: a whole cohort into one table, with masks, thumbnails and a QC report.

    brainseg batch INPUT... -o OUTDIR [--jobs N | --scheduler ADDRESS] [--resume] [--json]

INPUT is scan files, folders, globs, an OASIS-1 tree (``*_t88_masked_gfc.hdr``), a BIDS dataset
(``sub-*/[ses-*/]anat/*_T1w.nii[.gz]``) or DICOM series folders. For each scan it writes
``OUTDIR/masks/<scan>_seg.nii.gz`` (optionally ``uncertainty/<scan>_unc.nii.gz``),
``thumbs/<scan>.png`` (the overlay in three planes) and appends one row to ``OUTDIR/volumes.csv``
(COLUMNS below); at the end ``OUTDIR/report.html``, one self-contained page (report.py).

Safety: each output file is written atomically and a row is appended, in one write and flushed,
only after its files exist, so Ctrl+C or a kill leaves whole rows and whole files; a torn last
line (a kill in the middle of that one write) is cut off on the next run. `--resume` skips scans
that already have a row (ok or error; `--retry-failed` redoes the errors), so a re-run does no work
twice. A scan that cannot be read or segmented becomes a row with its error; the batch goes on.

Scale: `--jobs N` runs N worker processes on this machine, each loading MXNet and the model once,
with the cores split between them. `--scheduler ADDRESS` sends the scans to a Dask distributed
cluster (`dask scheduler`, `dask worker` on each machine): each worker process loads the model once
and writes its scans' files into OUTDIR, which must be on a file system every worker sees (NFS, a
cluster's shared disk); the client assembles the table. A worker that dies has its scans retried on
another (Dask reschedules them; `retries=2`).
"""
from __future__ import annotations

import csv
import glob
import io
import json
import logging
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.io.volume import scan_stem

log = logging.getLogger(__name__)

COLUMNS = ["subject", "session", "scan", "input", "series", "status", "error", "model", "model_version",
           "csf_ml", "gm_ml", "wm_ml", "brain_ml", "tiv_ml", "stripped", "icv_ml", "icv_source", "csf_fraction", "gm_fraction", "wm_fraction",
           "voxel_mm", "seconds", "qc_flags", "mean_entropy", "mask", "uncertainty",
           # native or atlas space (engine/io/space.py): the *_ml above are atlas-space mL on atlas rows;
           # native_* are the brain's own mL (= *_ml on native rows, atlas mL / ASF on atlas rows with
           # an ASF, empty without one) and etiv_oasis_ml is OASIS's eTIV, 1755 / ASF
           "space", "space_reason", "asf", "native_csf_ml", "native_gm_ml", "native_wm_ml", "native_brain_ml",
           "native_tiv_ml", "etiv_oasis_ml"]

# QC thresholds. TIV range from the issue (adults); tissue fractions of TIV: generous adult ranges
# (healthy and atrophied adults in OASIS-1 lie well inside: GM ~0.40-0.50, WM ~0.28-0.38,
# CSF ~0.15-0.35 of TIV); outside them a segmentation has almost surely gone wrong.
TIV_RANGE_ML = (900.0, 2200.0)
FRACTION_RANGES = {"csf": (0.05, 0.50), "gm": (0.25, 0.60), "wm": (0.18, 0.50)}
# mean softmax entropy over the brain (nats; ln 4 = 1.386 is "no idea"). Measured with the shipped
# ENet (enet-shipped-4, 2026-12-02): 0.35 on the demo scan (the template it was trained from), 0.40
# on the same brain stored on its side with a wrong affine. So this flag catches only gross
# failures; it is a prompt to look, not a verdict, and it has not been calibrated on real brains.
LOW_CONFIDENCE_NATS = 0.45
SCAN_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".mgz")
LABEL_WORDS = re.compile(r"(^|[_\-.])(fseg|seg|dseg|mask|label|labels|probseg|brainseg)([_\-.]|$)", re.I)


STOP_FILE = ".stop-requested"  # created in OUTDIR to stop a batch after the scan in progress


LOCK_FILE = ".brainseg-batch.lock"


class OutdirLock:
    """An exclusive lock on OUTDIR (issue #20: two batches on one folder both processed every scan):
    a file made with O_EXCL that records host, pid and start time. A lock left by a process that is
    gone (same host, pid not running) is stale and taken over, with a note; a live one - or one from
    another host, which cannot be checked - is refused with who holds it."""

    def __init__(self, outdir: Path):
        self.path = Path(outdir) / LOCK_FILE
        self.held = False

    def __enter__(self):
        import socket

        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == me["host"] and not _pid_alive(holder.get("pid")):
                    log.warning("%s: taking over a stale lock of pid %s (no longer running)", self.path,
                                holder.get("pid"))
                    self.path.unlink(missing_ok=True)
                    continue
                raise BatchError(f"{self.path.parent}: another batch is writing here (host {holder.get('host', '?')}, "
                                 f"pid {holder.get('pid', '?')}, since {holder.get('started', '?')}); wait for it, "
                                 f"or delete {self.path} if that batch is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise BatchError(f"{self.path}: could not take the lock")

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        return False


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class BatchStopped(KeyboardInterrupt):
    """Stop was asked for (the stop file): handled like Ctrl+C, rows whole, --resume goes on."""


class BatchError(ValueError):
    """Bad batch input (nothing found, a bad option); one line for the user."""


@dataclass
class ScanItem:
    key: str  # unique name of the outputs
    subject: str
    session: str
    path: str
    series: str | None = None
    atlas_marked: bool = False  # --atlas-space: the user says it is registered to an atlas
    asf: float | None = None  # OASIS's atlas scaling factor (--asf, --oasis-csv); used on atlas-space scans


# ----------------------------------------------------------------------------- finding scans
def _is_scan_file(p: Path) -> bool:
    low = p.name.lower()
    return p.is_file() and low.endswith(SCAN_SUFFIXES) and not LABEL_WORDS.search(scan_stem(p))


def _bids(root: Path) -> list[ScanItem]:
    out = []
    for f in sorted(root.glob("sub-*/anat/*_T1w.nii*")) + sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii*")):
        sub = next(p for p in f.parts if p.startswith("sub-"))
        ses = next((p for p in f.parts if p.startswith("ses-")), "")
        out.append(ScanItem(scan_stem(f), sub, ses, str(f)))
    return out


def _oasis(root: Path) -> list[ScanItem]:
    out = []
    for f in sorted(root.rglob("*_t88_masked_gfc.hdr")):
        m = re.search(r"(OAS1_\d{4})_(MR\d)", f.name)
        sub, ses = (m.group(1), m.group(2)) if m else (scan_stem(f), "")
        out.append(ScanItem(f"{sub}_{ses}" if ses else scan_stem(f), sub, ses, str(f)))
    return out


def _dicom_items(folder: Path, only_file: Path | None = None) -> list[ScanItem]:
    """The image series of a DICOM folder (with `only_file`: that file's series only - issue #20:
    giving one file of a T1 series queued every other series in its folder). The subject is the
    user's own folder structure: the folder above the series folder (patientA/T1_MPRAGE ->
    patientA), as for NIfTI; --subject-from patientid replaces it later (apply_subject_from)."""
    from engine.io.dicom import find_series

    found, _ = find_series(folder)
    many = len(found) > 1  # the folder holds several series: each item names its own
    series = found if only_file is None else \
        [s for s in found if any(f.resolve() == only_file.resolve() for f in s.files)]
    subject = folder.parent.name if folder.parent != folder and folder.parent.name else folder.name
    return [ScanItem(f"{subject}__{folder.name}_s{s.number or i}" if many else f"{subject}__{folder.name}", subject,
                     "", str(folder), s.uid if many else None) for i, s in enumerate(series)]


def apply_subject_from(items: list[ScanItem], how: str, outdir: Path) -> None:
    """--subject-from patientid: DICOM items get a subject that is a hash of their PatientID, salted
    per OUTDIR (the salt is kept in OUTDIR, so a resume or a second run into the same table gives the
    same subjects), never the ID or the name in clear."""
    if how == "folder":
        return
    if how != "patientid":
        raise BatchError(f"--subject-from {how}: folder or patientid")
    import hashlib
    import secrets

    from engine.io.dicom import find_series

    outdir.mkdir(parents=True, exist_ok=True)
    salt_file = outdir / ".brainseg-salt"
    if not salt_file.exists():
        salt_file.write_text(secrets.token_hex(16))
        os.chmod(salt_file, 0o600)
    salt = salt_file.read_text().strip()
    from engine.io.dicom import _dcmread

    for it in items:
        if not Path(it.path).is_dir():
            continue
        series, _ = find_series(Path(it.path))
        s = next((x for x in series if it.series in (None, x.uid)), None)
        if s is None or not s.files:
            continue
        pid = str(getattr(_dcmread(s.files[0], header_only=True), "PatientID", "") or "")
        if pid:
            it.subject = "pid-" + hashlib.sha256((salt + pid).encode()).hexdigest()[:12]
            it.key = f"{it.subject}__{Path(it.path).name}" + (f"_s{s.number}" if it.series else "")


def discover(inputs: list[str]) -> list[ScanItem]:
    """The scans the inputs stand for, each once, with unique keys."""
    from engine.io.dicom import is_dicom_file

    items: list[ScanItem] = []
    for raw in inputs:
        if glob.has_magic(raw):  # a glob: only what looks like a scan (not label maps, sidecars, .img halves)
            paths = [Path(p) for p in sorted(glob.glob(raw, recursive=True))]
            paths = [p for p in paths if p.is_dir() or _is_scan_file(p) or (is_dicom_file(p) and p.is_file())]
        else:
            paths = [Path(raw)]
        if not paths:
            raise BatchError(f"{raw}: matches no file")
        for p in paths:
            if not p.exists():
                raise BatchError(f"{p}: no such file or folder")
            if p.is_file():
                if is_dicom_file(p):
                    items += _dicom_items(p.parent, only_file=p)
                else:
                    items.append(ScanItem(scan_stem(p), scan_stem(p), "", str(p)))
                continue
            if (p / "dataset_description.json").exists() or any(p.glob("sub-*/anat")) or any(p.glob("sub-*/ses-*/anat")):
                found = _bids(p)
            elif any(p.rglob("*_t88_masked_gfc.hdr")):
                found = _oasis(p)
            elif any(is_dicom_file(f) for f in p.iterdir() if f.is_file()):
                found = _dicom_items(p)
            else:
                found = []
                for f in sorted(p.rglob("*")):
                    if _is_scan_file(f):
                        rel = f.relative_to(p)
                        key = "__".join(list(rel.parts[:-1]) + [scan_stem(f)])
                        found.append(ScanItem(key, rel.parts[0] if len(rel.parts) > 1 else scan_stem(f), "", str(f)))
                    elif f.is_dir() and f != p and any(is_dicom_file(x) for x in f.iterdir() if x.is_file()):
                        found += _dicom_items(f)
            if not found:
                raise BatchError(f"{p}: no scans found (looked for BIDS *_T1w, OASIS *_t88_masked_gfc.hdr, "
                                 f"DICOM series and {', '.join(SCAN_SUFFIXES)} files)")
            items += found
    seen_paths, seen_keys, out = set(), {}, []
    for it in items:
        # absolute once, here where the command starts (issue #20): the table stores it, resume
        # matches it from any folder, and Dask workers started elsewhere find it
        it.path = os.path.abspath(it.path)
        ident = (str(Path(it.path).resolve()), it.series)
        if ident in seen_paths:
            continue
        seen_paths.add(ident)
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", it.key) or "scan"
        n = seen_keys.get(base, 0)
        seen_keys[base] = n + 1
        it.key = base if n == 0 else f"{base}_{n + 1}"
        out.append(it)
    return out


# ----------------------------------------------------------------------------- one scan
_SEGMENTERS: dict = {}  # per process: the model loads once


def stripped_version() -> str:
    from engine.infer.scan import get_extractor

    return get_extractor().version


def resolve_precision(model_dir, precision: str = "auto") -> str:
    """fp32 or int8: "auto" is what `brainseg segment` runs by default (INT8 where the model's record
    offers it), so both give a scan the same labels."""
    from engine.infer.inference import default_precision

    return default_precision(model_dir)[0] if precision == "auto" else precision


def version_label(model_dir, precision: str) -> str:
    """The model_version a row records: the version, and " (INT8)" for INT8 rows - INT8 and FP32
    labels differ a little, so one table must not mix them silently (the resume check below) - and
    " + " the secondary planes' network's version where one runs (FP32 only)."""
    from engine.infer.inference import secondary_folder
    from engine.nets.weights import read_model_dir

    second = secondary_folder(model_dir) if precision != "int8" else None
    return _version_text(read_model_dir(model_dir, verify=False).version,
                         read_model_dir(second, verify=False).version if second else None, precision)


def _row_version(seg) -> str:
    """version_label of a loaded Segmenter."""
    second = getattr(seg, "secondary_info", None)
    return _version_text(seg.info.version, second.version if second else None, seg.precision)


def _version_text(version: str, second: str | None, precision: str) -> str:
    return version + (f" + {second}" if second else "") + (" (INT8)" if precision == "int8" else "")


def _segmenter(model_dir: str, precision: str = "auto"):
    from engine.infer.inference import Segmenter

    precision = resolve_precision(model_dir, precision)
    if (model_dir, precision) not in _SEGMENTERS:
        _SEGMENTERS.clear()
        _SEGMENTERS[model_dir, precision] = Segmenter(model_dir, precision=precision)
    return _SEGMENTERS[model_dir, precision]


def thumbnail(labels: np.ndarray, scan: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The overlay through the brain's centre in the three planes, side by side, half size."""
    from engine.io.export import grey_window, render_slice
    from engine.io.orientation import ViewGeometry

    window = grey_window(scan)  # once for the three planes

    centre = np.round(np.argwhere(labels > 0).mean(axis=0)).astype(int) if (labels > 0).any() else \
        np.array(labels.shape) // 2
    tiles = []
    for plane in ("axial", "coronal", "sagittal"):
        g = ViewGeometry.for_view(plane, affine, labels.shape)
        tiles.append(render_slice(labels, affine, plane, int(centre[g.axis]), scan=scan, opacity=0.45,
                                  window=window))
    h = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, h - t.shape[0]), (0, 4), (0, 0))) for t in tiles]
    img = np.concatenate(tiles, axis=1)
    return img[::2, ::2] if h > 160 else img


def qc_flags(row: dict, skull: bool, geometry_notes: list[str]) -> list[str]:
    """`skull`: a skull is present in what was segmented (not extracted first)."""
    flags = []
    if skull:
        flags.append("skull present")
    if row.get("mean_entropy") is not None and row["mean_entropy"] > LOW_CONFIDENCE_NATS:
        flags.append("low confidence")
    tiv = row.get("tiv_ml") or 0
    # the range is for a brain's own TIV: atlas-space volumes are checked only when an ASF turned
    # them into native mL (every head was scaled to the atlas's size; report.py says so)
    atlas = row.get("space") == "atlas"
    checked = _number(row.get("native_tiv_ml")) if atlas else tiv
    if checked is not None and not TIV_RANGE_ML[0] <= checked <= TIV_RANGE_ML[1]:
        flags.append(f"{'native ' if atlas else ''}TIV {checked:.0f} mL outside "
                     f"{TIV_RANGE_ML[0]:.0f}-{TIV_RANGE_ML[1]:.0f}")
    for k, (lo, hi) in FRACTION_RANGES.items():
        f = row.get(f"{k}_fraction")
        if f is not None and tiv > 0 and not lo <= f <= hi:
            flags.append(f"{k.upper()} fraction {f:.2f} outside {lo:.2f}-{hi:.2f}")
    flags += geometry_notes
    return flags


def _number(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def space_columns(space, ml: dict) -> dict:
    """The row's space columns (COLUMNS) from an engine.io.space.Space and the volumes in mL."""
    def r(v):
        return None if v is None else round(v, 3)

    nat = {k: space.native_ml(ml[k]) for k in ("csf", "gm", "wm")}
    known = space.native_known
    return {"space": space.name, "space_reason": space.reason or "", "asf": space.asf,
            "native_csf_ml": r(nat["csf"]), "native_gm_ml": r(nat["gm"]), "native_wm_ml": r(nat["wm"]),
            "native_brain_ml": r(nat["gm"] + nat["wm"]) if known else None,
            "native_tiv_ml": r(nat["csf"] + nat["gm"] + nat["wm"]) if known else None,
            "etiv_oasis_ml": r(space.etiv_ml)}


def oasis_session_id(item: ScanItem) -> str | None:
    """OASIS's session id (OAS1_0001_MR1, the `ID` of its CSVs) of a scan, from what discover()
    derived or the file name."""
    if re.fullmatch(r"OAS\d_\d{4}", item.subject) and re.fullmatch(r"MR\d+", item.session):
        return f"{item.subject}_{item.session}"
    m = re.search(r"(OAS\d_\d{4}_MR\d+)", Path(item.path).name)
    return m.group(1) if m else None


def apply_space_options(items: list[ScanItem], atlas_space: bool = False, asf: float | None = None,
                        oasis_csv: str | None = None) -> list[str]:
    """Mark the items atlas-registered (--atlas-space) and give them an ASF: --asf for all, or each
    OASIS session its own from --oasis-csv. An ASF is used only on scans found atlas-space. Returns
    warnings for the user (sessions the CSV has no ASF for)."""
    from engine.io.space import read_oasis_asf

    if asf is not None and oasis_csv:
        raise BatchError("--asf and --oasis-csv: choose one (--asf gives every atlas-space scan the same ASF)")
    table: dict[str, float] = {}
    if oasis_csv:
        try:
            table = read_oasis_asf(oasis_csv)
        except OSError as exc:
            raise BatchError(f"--oasis-csv {oasis_csv}: cannot be read ({exc.strerror or exc})") from exc
        except ValueError as exc:
            raise BatchError(f"--oasis-csv: {exc}") from exc
    missing = []
    for it in items:
        it.atlas_marked = it.atlas_marked or atlas_space
        if asf is not None:
            it.asf = asf
        elif oasis_csv:
            it.asf = table.get(oasis_session_id(it) or "")
            if it.asf is None:
                missing.append(it.key)
    if not missing:
        return []
    return [f"--oasis-csv: {oasis_csv} has no ASF for {len(missing)} of {len(items)} scans "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); atlas-space ones among them get "
            "atlas-space mL only and no TIV range check"]


def process_scan(item: ScanItem, outdir: str, model_dir: str, uncertainty: bool = False, strip: str = "auto",
                 precision: str = "auto") -> dict:
    """Read, segment and write one scan's files; returns its row (an error row when it fails).
    Runs in the batch process, a --jobs worker or a Dask worker."""
    from engine.core.atomic import atomic_write
    from engine.infer.inference import SegmentConfig
    from engine.io.stats import volume_stats
    from engine.io.volume import save_image, save_labels

    t0 = time.perf_counter()
    row = {"subject": item.subject, "session": item.session, "scan": item.key, "input": item.path,
           "series": item.series or "", "status": "error", "error": ""}
    try:
        from engine.document import open_scan
        from engine.io.space import Space, atlas_space_reason, mask_xform_code

        doc = open_scan(item.path, series=item.series, atlas_marked=item.atlas_marked)  # as the app opens it
        vol = doc.scan
        space = Space.of(vol, item.asf if atlas_space_reason(vol) else None)
        seg = _segmenter(model_dir, precision)
        from engine.infer.scan import segment_scan

        res, decision, stripped = segment_scan(seg, vol.data, vol.affine, SegmentConfig(uncertainty=True), strip=strip)
        out = Path(outdir)
        mask = out / "masks" / f"{item.key}_seg.nii.gz"
        mask.parent.mkdir(parents=True, exist_ok=True)
        save_labels(mask, res.labels, vol.affine, xform_code=mask_xform_code(vol))
        unc_path = ""
        if uncertainty and res.uncertainty is not None:
            up = out / "uncertainty" / f"{item.key}_unc.nii.gz"
            up.parent.mkdir(parents=True, exist_ok=True)
            save_image(up, res.uncertainty.astype(np.float32), vol.affine, xform_code=mask_xform_code(vol))
            unc_path = str(up.relative_to(out))
        thumb = out / "thumbs" / f"{item.key}.png"
        thumb.parent.mkdir(parents=True, exist_ok=True)
        import imageio.v2 as imageio

        img = thumbnail(res.labels, vol.data, vol.affine)
        atomic_write(thumb, lambda tmp: imageio.imwrite(tmp, img, format="png"))
        st = volume_stats(res.labels, vol.voxel_volume_ml)
        ml = st["volumes_ml"]
        tiv = ml["csf"] + ml["gm"] + ml["wm"]
        brain = ml["gm"] + ml["wm"]
        ent = None
        if res.uncertainty is not None and (res.labels > 0).any():
            ent = float(res.uncertainty[res.labels > 0].mean())
        row.update({
            "status": "ok", "model": seg.info.arch,
            "model_version": _row_version(seg),
            "csf_ml": round(ml["csf"], 3), "gm_ml": round(ml["gm"], 3), "wm_ml": round(ml["wm"], 3),
            "brain_ml": round(brain, 3), "tiv_ml": round(tiv, 3),
            "stripped": "yes" if stripped is not None else "no",
            "icv_ml": round(stripped.volume_ml, 3) if stripped is not None else round(tiv, 3),
            "icv_source": ("brain extraction (" + stripped_version() + ")" if stripped is not None
                           else "the scan's own mask (skull-stripped input)" if decision.reason.startswith("already")
                           else "segmentation (no extraction: " + decision.reason + ")"),
            "csf_fraction": round(ml["csf"] / tiv, 4) if tiv else None,
            "gm_fraction": round(ml["gm"] / tiv, 4) if tiv else None,
            "wm_fraction": round(ml["wm"] / tiv, 4) if tiv else None,
            "voxel_mm": "x".join(f"{v:.3g}" for v in vol.voxel_size),
            "mean_entropy": None if ent is None else round(ent, 4),
            "mask": str(mask.relative_to(out)), "uncertainty": unc_path,
        })
        row.update(space_columns(space, ml))
        notes = []
        if stripped is not None and stripped.unsure:
            notes.append("brain extraction unsure: " + "; ".join(stripped.unsure_reasons))
        notes += doc.facts(check_skull=False).flags  # what the app and the CLI say about the scan, short
        skull = stripped is None and doc.skull_on
        row["qc_flags"] = "; ".join(qc_flags(row, skull, notes))
    except Exception as exc:  # one broken scan is a row, never the end of the batch
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        row["error"] = msg
        log.info("%s: %s", item.path, msg)  # the row and the progress line say it already
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


# ----------------------------------------------------------------------------- the table
class Table:
    """OUTDIR/volumes.csv: header once, whole rows appended one write at a time."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> list[dict]:
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # a torn last row (killed mid-write): cut it off
            keep = raw[: raw.rfind(b"\n") + 1]
            log.warning("%s: removing an incomplete last row", self.path)
            with open(self.path, "r+b") as f:
                f.truncate(len(keep))
            raw = keep
        rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))
        return rows

    def start(self) -> None:
        from engine.core.atomic import atomic_write

        if not self.path.exists() or self.path.stat().st_size == 0:
            atomic_write(self.path, lambda tmp: tmp.write_text(",".join(COLUMNS) + "\n", encoding="utf-8"))
        else:
            head = self.path.read_text(encoding="utf-8").splitlines()[0].split(",")
            if head != COLUMNS:
                raise BatchError(f"{self.path}: written by another version (columns differ); use a new OUTDIR")

    def append(self, row: dict) -> None:
        buf = io.StringIO()
        csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n").writerow(
            {k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS})
        data = buf.getvalue().encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        size = os.fstat(fd).st_size
        try:
            # one write: a row is whole or (killed mid-write) cut off next time
            done = os.write(fd, data)
            while done < len(data):  # a short write (disk nearly full): finish it or take it back
                n = os.write(fd, data[done:])
                if n <= 0:
                    raise OSError(f"{self.path}: could not append a row")
                done += n
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)  # never a torn row in the middle of the table
            raise
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- running
def _fmt_eta(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


class Progress:
    def __init__(self, total: int, stream=None):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.stream = stream or sys.stderr

    def step(self, row: dict) -> None:
        self.done += 1
        el = time.perf_counter() - self.t0
        eta = el / self.done * (self.total - self.done)
        what = "ok" if row.get("status") == "ok" else f"ERROR {row.get('error', '')}"
        flags = f" [{row['qc_flags']}]" if row.get("qc_flags") else ""
        print(f"[{self.done}/{self.total}] {row['scan']}: {what}{flags} ({row.get('seconds', 0):.1f} s); "
              f"about {_fmt_eta(eta)} left", file=self.stream, flush=True)


def _worker_init(threads: int) -> None:
    from engine.core.mx_env import configure_threads

    configure_threads(threads=threads)


def run(items: list[ScanItem], outdir: Path, model_dir: Path, jobs: int = 1, scheduler: str | None = None,
        resume: bool = False, retry_failed: bool = False, uncertainty: bool = False, report: bool = True,
        progress_stream=None, on_row=None, strip: str = "auto", allow_mixed_versions: bool = False,
        security: "ClusterSecurity | None" = None, precision: str = "auto") -> tuple[list[dict], int]:
    """Process the items into OUTDIR; returns (all rows of the table, how many were processed now).
    KeyboardInterrupt propagates after the rows finished so far are written."""
    outdir, model_dir = Path(os.path.abspath(outdir)), Path(os.path.abspath(model_dir))
    precision = resolve_precision(model_dir, precision)  # once, here: every worker runs the same
    for it in items:
        it.path = os.path.abspath(it.path)
    # refuse an unsafe cluster before anything is written; resolved once, used by _run_dask
    sec = (security or ClusterSecurity()).for_address(scheduler) if scheduler else None
    outdir.mkdir(parents=True, exist_ok=True)
    with OutdirLock(outdir):
        return _run_locked(items, outdir, model_dir, jobs, scheduler, resume, retry_failed, uncertainty, report,
                           progress_stream, on_row, strip, allow_mixed_versions, sec, precision)


def _row_input(r: dict, outdir: Path) -> str:
    """A row's input as an absolute path. Tables written before issue #20 hold inputs as typed:
    a relative one is taken against the folders it was most likely typed in - the current one,
    OUTDIR's parent, OUTDIR - whichever holds the file."""
    raw = r.get("input", "")
    if not raw or os.path.isabs(raw):
        return raw
    for base in (Path.cwd(), outdir.parent, outdir):
        cand = base / raw
        if cand.exists():
            return str(cand.resolve())
    return os.path.abspath(raw)


def _run_locked(items, outdir, model_dir, jobs, scheduler, resume, retry_failed, uncertainty, report,
                progress_stream, on_row, strip, allow_mixed_versions=False, sec=None, precision="fp32"):
    table = Table(outdir / "volumes.csv")
    existing = table.load()
    if existing and not resume:
        raise BatchError(f"{outdir / 'volumes.csv'} already has {len(existing)} rows: add --resume to continue "
                         "that batch, or choose a new OUTDIR")
    if existing and not allow_mixed_versions:  # one cohort table, one model version (issue #20)
        now = version_label(model_dir, precision)
        before = sorted({r.get("model_version") for r in existing if r.get("status") == "ok" and r.get("model_version")}
                        - {now})
        if before:
            raise BatchError(f"{outdir / 'volumes.csv'} holds rows segmented with {', '.join(before)}, and this run "
                             f"would use {now}: one table would mix model versions. Resume with the same model "
                             "(--weights VERSION), choose a new OUTDIR, or add --allow-mixed-versions")
    table.start()
    # a scan is done when a row names its input (and series); keys already in the table keep
    # their input, so a resume with other inputs never writes one scan's files over another's
    ident = lambda it: (str(Path(it.path).resolve()), it.series or "")  # noqa: E731
    row_ident = lambda r: (str(Path(_row_input(r, outdir)).resolve()), r.get("series") or "")  # noqa: E731
    done = {row_ident(r) for r in existing if r.get("status") == "ok" or not retry_failed}
    todo = [it for it in items if ident(it) not in done]
    used = {r["scan"]: row_ident(r) for r in existing}
    for it in todo:  # names stay unique across the table and this run, renamed ones included
        base, n = it.key, 1
        while it.key in used and used[it.key] != ident(it):
            n += 1
            it.key = f"{base}_{n}"
        used[it.key] = ident(it)
    if retry_failed and existing:  # the failed rows are redone: keep only the others
        redo = {ident(i) for i in todo}
        kept = [r for r in existing if r.get("status") == "ok" or row_ident(r) not in redo]
        if len(kept) != len(existing):
            from engine.core.atomic import atomic_write

            buf = io.StringIO()
            w = csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            w.writerows(kept)
            atomic_write(table.path, lambda tmp: tmp.write_text(buf.getvalue(), encoding="utf-8"))
    progress = Progress(len(todo), progress_stream)
    if len(todo) < len(items):
        print(f"resuming: {len(items) - len(todo)} of {len(items)} scans already in {table.path.name}",
              file=progress.stream, flush=True)
    count = 0

    stop_file = outdir / STOP_FILE
    stop_file.unlink(missing_ok=True)

    def take(row):
        nonlocal count
        table.append(row)
        count += 1
        progress.step(row)
        if on_row is not None:
            on_row(row)
        if stop_file.exists():  # the GUI's Stop, on every platform: after this whole row
            stop_file.unlink(missing_ok=True)
            raise BatchStopped()

    try:
        if scheduler:
            _run_dask(todo, outdir, model_dir, scheduler, uncertainty, take, strip, sec, precision)
        elif jobs > 1 and len(todo) > 1:
            _run_local(todo, outdir, model_dir, jobs, uncertainty, take, strip, precision)
        else:
            for it in todo:
                take(process_scan(it, str(outdir), str(model_dir), uncertainty, strip, precision))
    finally:
        rows = table.load()
        if report and rows:
            from engine.report import write_report

            write_report(outdir, rows, model_dir)
    return rows, count


def _result_or_error_row(future, item: ScanItem) -> dict:
    """A worker's row, or an error row when the worker itself died (killed, out of memory) or its
    scans ran out of retries: the batch goes on; --resume --retry-failed redoes them."""
    try:
        return future.result()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        log.warning("%s: the worker processing it failed: %s", item.path, exc)
        return {"subject": item.subject, "session": item.session, "scan": item.key, "input": item.path,
                "series": item.series or "", "status": "error",
                "error": f"the worker process failed ({type(exc).__name__}: {exc})".strip(), "seconds": 0}


def _run_local(todo, outdir, model_dir, jobs, uncertainty, take, strip="auto", precision="fp32") -> None:
    """N worker processes. A worker that dies (killed, out of memory) breaks the pool: the scans it
    and the pool had not finished are retried once in new workers; a scan that breaks a pool twice
    becomes an error row."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from engine.core.hardware import cpu_cores

    remaining, retried = list(todo), set()
    while remaining:
        n = min(jobs, len(remaining))
        broken = []
        with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(max(1, cpu_cores() // n),)) as pool:
            futs = {pool.submit(process_scan, it, str(outdir), str(model_dir), uncertainty, strip, precision): it
                    for it in remaining}
            try:
                for f in as_completed(futs):
                    it = futs[f]
                    if isinstance(f.exception(), BrokenProcessPool) and it.key not in retried:
                        broken.append(it)
                        continue
                    take(_result_or_error_row(f, it))
            except KeyboardInterrupt:
                for f in futs:
                    f.cancel()
                raise
        if broken:
            log.warning("a worker process died: retrying %d scan(s) in new workers", len(broken))
            retried |= {it.key for it in broken}
        remaining = broken


@dataclass
class ClusterSecurity:
    """How to reach a Dask scheduler (issue #20: a plaintext, unauthenticated scheduler lets anyone who
    can reach it run code on machines that hold patient scans). tls:// needs the three files, named
    as Dask's own `dask scheduler` / `dask worker` options; a plaintext tcp:// scheduler away from
    this machine is refused unless `insecure`."""

    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure: bool = False

    def for_address(self, address: str):
        """The distributed.security.Security for `address`, or None for plaintext; raises BatchError
        for a set-up that must not run."""
        scheme, _, rest = address.partition("://") if "://" in address else ("tcp", "", address)
        if scheme == "tls":
            missing = [n for n, v in (("--tls-ca-file", self.tls_ca_file), ("--tls-cert", self.tls_cert),
                                      ("--tls-key", self.tls_key)) if not v]
            if missing:
                raise BatchError(f"--scheduler {address}: TLS needs {', '.join(missing)}")
            for v in (self.tls_ca_file, self.tls_cert, self.tls_key):
                if not os.path.isfile(v):
                    raise BatchError(f"{v}: no such file (TLS certificate or key)")
            from distributed.security import Security

            return Security(tls_ca_file=os.path.abspath(self.tls_ca_file),
                            tls_client_cert=os.path.abspath(self.tls_cert),
                            tls_client_key=os.path.abspath(self.tls_key), require_encryption=True)
        if scheme not in ("tcp", "inproc"):
            raise BatchError(f"--scheduler {address}: unknown protocol {scheme!r} (tls:// or tcp://)")
        host = rest.rsplit(":", 1)[0].strip("[]") if ":" in rest else rest
        if not _is_loopback(host):
            if not self.insecure:
                raise BatchError(f"--scheduler {address}: a plaintext scheduler on another machine lets anyone "
                                 "who can reach it run code where the scans are. Use tls:// with --tls-ca-file, "
                                 "--tls-cert and --tls-key (README 'On a cluster'), or add --insecure on a "
                                 "network you trust")
            print(f"warning: --scheduler {address}: plaintext and unauthenticated (--insecure)", file=sys.stderr)
        return None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _run_dask(todo, outdir, model_dir, address, uncertainty, take, strip="auto", sec=None, precision="fp32") -> None:
    """`sec`: the distributed Security that run() resolved from ClusterSecurity (None: plaintext)."""
    from engine.core.extras import MissingExtra, need

    try:
        need("distributed", "--scheduler (a Dask cluster)")
    except MissingExtra as exc:
        raise BatchError(str(exc)) from exc
    from distributed import Client, as_completed
    try:
        client = Client(address, timeout=20, security=sec) if sec is not None else Client(address, timeout=20)
    except (OSError, TimeoutError) as exc:
        raise BatchError(f"--scheduler {address}: cannot reach the Dask scheduler ({exc})") from exc
    try:
        futs = {client.submit(process_scan, it, str(outdir), str(model_dir), uncertainty, strip, precision, pure=False,
                              retries=2, key=f"brainseg-{it.key}-{time.time_ns()}"): it for it in todo}
        for f in as_completed(list(futs)):
            take(_result_or_error_row(f, futs[f]))
    finally:
        client.close()


# ----------------------------------------------------------------------------- CLI
def add_batch_parser(sub) -> None:
    from engine.io.space import add_space_arguments

    p = sub.add_parser("batch", help="segment a cohort: masks, one volumes.csv with QC flags, report.html")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="scan files, folders, globs (quote them), an OASIS-1 tree, a BIDS dataset, DICOM folders")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--model", default="auto", choices=("auto", "unet", "enet"))
    p.add_argument("--weights", help="a model folder, a `brainseg train` output folder, or a version name")
    p.add_argument("--uncertainty", action="store_true", help="also write each scan's uncertainty map")
    add_space_arguments(p)
    p.add_argument("--oasis-csv", metavar="FILE",
                   help="OASIS's demographics CSV (columns ID, e.g. OAS1_0001_MR1, and ASF): each OASIS session's "
                   "ASF, for native mL and eTIV")
    p.add_argument("--strip", default="auto", choices=("auto", "on", "off"),
                   help="brain extraction: auto (scans with a skull; default), on (always), off (never)")
    p.add_argument("--subject-from", choices=("folder", "patientid"), default="folder",
                   help="DICOM subjects: the folder above the series folder (default), or a hash of PatientID "
                   "salted per OUTDIR (never the ID or name in clear)")
    p.add_argument("--resume", action="store_true", help="continue a batch: skip scans already in volumes.csv")
    p.add_argument("--retry-failed", action="store_true", help="with --resume: redo the scans that failed")
    p.add_argument("--allow-mixed-versions", action="store_true",
                   help="with --resume: allow rows from another model version in the same table")
    p.add_argument("--jobs", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a Dask scheduler: tls://HOST:8786 with the --tls-* files, or tcp:// on this machine")
    p.add_argument("--tls-ca-file", metavar="PEM", help="the CA that signed the cluster's certificates")
    p.add_argument("--tls-cert", metavar="PEM", help="this client's certificate")
    p.add_argument("--tls-key", metavar="PEM", help="this client's private key")
    p.add_argument("--insecure", action="store_true",
                   help="allow a plaintext tcp:// scheduler on another machine (a network you trust)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "int8"),
                   help="auto (default): as brainseg segment - INT8 where the model's record offers it (today "
                        "U-Net), FP32 otherwise; INT8 rows record their model_version with \" (INT8)\"")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("--json", action="store_true", help="print the rows as JSON at the end")
    p.set_defaults(func=cmd_batch)


def _batch_precision(model_dir, requested: str) -> str:
    """--precision int8 where INT8 is not offered for the model is an error that says why."""
    if requested == "int8":
        from engine.infer.inference import int8_offer

        ok, why = int8_offer(model_dir)
        if not ok:
            raise BatchError(f"--precision int8: {why}")
    return requested


def cmd_batch(args) -> int:
    from engine.core.mx_env import configure_threads
    from engine.store.versions import resolve_model

    if args.jobs < 1:
        raise BatchError(f"--jobs {args.jobs}: give at least 1")
    if args.jobs > 1 and args.scheduler:
        raise BatchError("--jobs and --scheduler: choose one (Dask workers set their own processes)")
    configure_threads()
    model_dir, arch, reason = resolve_model(args.model, args.weights)
    items = discover(args.inputs)
    apply_subject_from(items, args.subject_from, Path(os.path.abspath(args.output)))
    for note in apply_space_options(items, atlas_space=args.atlas_space, asf=args.asf, oasis_csv=args.oasis_csv):
        print(f"warning: {note}", file=sys.stderr)
    out = Path(os.path.abspath(args.output))
    model_dir = Path(os.path.abspath(model_dir))
    print(f"{len(items)} scan{'s' if len(items) != 1 else ''}; model {model_dir} ({reason}); output {out}",
          file=sys.stderr)
    try:
        rows, n = run(items, out, model_dir, jobs=args.jobs, scheduler=args.scheduler, resume=args.resume,
                      retry_failed=args.retry_failed, uncertainty=args.uncertainty, report=not args.no_report,
                      strip=args.strip, allow_mixed_versions=args.allow_mixed_versions,
                      security=ClusterSecurity(args.tls_ca_file, args.tls_cert, args.tls_key, args.insecure),
                      precision=_batch_precision(model_dir, args.precision))
    except KeyboardInterrupt:
        rows = Table(out / "volumes.csv").load()
        print(f"\ninterrupted: {len(rows)} rows in {out / 'volumes.csv'}; run again with --resume to finish",
              file=sys.stderr)
        return 130
    bad = sum(1 for r in rows if r.get("status") != "ok")
    flagged = sum(1 for r in rows if r.get("qc_flags"))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{n} scan{'s' if n != 1 else ''} processed now; {len(rows)} rows in {out / 'volumes.csv'} "
              f"({bad} failed, {flagged} flagged for QC)" + ("" if args.no_report else f"; report {out / 'report.html'}"))
    return 0 if bad == 0 else 3


def item_dict(item: ScanItem) -> dict:
    return asdict(item)
