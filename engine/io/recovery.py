"""Crash recovery: the label map and its edit record, autosaved to a file per scan.

The GUI writes a snapshot every few seconds of idle and on every slice change (in a worker
thread, from a copy of the arrays); after a crash or kill, reopening the scan finds the file and
offers to restore it. Files live in <data dir>/recovery/ and are written atomically, so a kill
during a save leaves the previous snapshot intact.

Format 2 (issue #19) is keyed by the scan's content - a hash of its voxels, shape and affine
(`scan_key`), for a DICOM series as for a file - not by its path: every OASIS scan is 176x208x176,
and a path-and-shape key offered one person's edits on another person's scan saved under the same
name. A moved or renamed scan still finds its edits. The file holds the labels, the network's
prediction, the labels as opened, and the provenance map (`origin`), never a preview.
Older, path-keyed files are still offered, after an identity check: same shape, and the scan file
not modified after the snapshot was taken.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.core.atomic import atomic_write
from engine.core.paths import data_dir

log = logging.getLogger(__name__)


FORMAT = 2


@dataclass
class RecoveryInfo:
    path: Path
    scan: str
    saved_at: float
    edit_count: int
    edited_slices: list[int]
    edited_pairs: list | None = None  # (array axis, slice) corrected in that plane; None in older files
    format: int = 1
    scan_key: str | None = None
    shape: tuple = ()  # the labels' shape when written

    @property
    def saved_at_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.saved_at))


def recovery_dir() -> Path:
    d = data_dir() / "recovery"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def scan_key(data: np.ndarray, affine: np.ndarray) -> str:
    """The identity of a scan's content: a hash of its voxels (as stored in memory), shape and
    affine (rounded to 1e-4 mm, so a re-read gives the same key)."""
    h = hashlib.sha1()
    a = np.ascontiguousarray(data)
    h.update(repr((a.shape, str(a.dtype))).encode())
    h.update(memoryview(a).cast("B"))
    h.update(np.round(np.asarray(affine, np.float64), 4).tobytes())
    return "c" + h.hexdigest()[:24]


def recovery_path(scan_path: str | os.PathLike, key: str | None = None) -> Path:
    """The snapshot's file: by content `key` (format 2), else by the scan's path (format 1)."""
    if key is not None:
        return recovery_dir() / f"{Path(scan_path).name}.{key}.recovery.npz"
    path_key = hashlib.sha1(str(Path(scan_path).resolve()).encode()).hexdigest()[:16]
    return recovery_dir() / f"{Path(scan_path).name}.{path_key}.recovery.npz"


def save_recovery(scan_path: str | os.PathLike, labels: np.ndarray, edited_slices: list[int],
                  edit_count: int, predicted: np.ndarray | None = None, edited_pairs: list | None = None,
                  baseline: np.ndarray | None = None, origin: np.ndarray | None = None,
                  key: str | None = None) -> Path:
    """Write the snapshot atomically; returns its path. `edit_count` is the number of edits not
    saved yet (what a restore brings back). With the scan's content `key` (scan_key) the file is
    format 2; without, the old path-keyed format (kept for tools and tests of old files)."""
    path = recovery_path(scan_path, key)
    meta = {"scan": str(Path(scan_path).resolve()), "saved_at": time.time(), "edit_count": int(edit_count),
            "edited_slices": [int(k) for k in edited_slices], "shape": list(labels.shape),
            "format": FORMAT if key is not None else 1, "scan_key": key}
    if edited_pairs is not None:
        meta["edited"] = [[int(a), int(k)] for a, k in edited_pairs]
    buf = io.BytesIO()
    arrays = {"labels": labels, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    if predicted is not None:
        arrays["predicted"] = predicted
    if baseline is not None:  # the labels as opened, where the network has not run: what edits are measured against
        arrays["baseline"] = baseline
    if origin is not None:  # what last set each voxel (engine/labels/labelmap.py)
        arrays["origin"] = origin
    np.savez_compressed(buf, **arrays)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()), mode=0o600)  # labels of a patient: private
    return path


def _read_info(path: Path) -> RecoveryInfo | None:
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
    except Exception as exc:  # a corrupt snapshot must not stop the scan from opening
        log.warning("ignoring unreadable recovery file %s: %s", path, exc)
        return None
    info = RecoveryInfo(path, meta["scan"], float(meta["saved_at"]), int(meta["edit_count"]),
                        list(meta.get("edited_slices", [])), meta.get("edited"), int(meta.get("format", 1)),
                        meta.get("scan_key"), tuple(meta.get("shape", ())))
    return info


def find_recovery(scan_path: str | os.PathLike, shape: tuple[int, ...] | None = None,
                  key: str | None = None) -> RecoveryInfo | None:
    """The snapshot for this scan: one keyed by its content `key` (wherever the scan was when it
    was written), else an old path-keyed one that passes the identity check (same shape; the scan
    file not modified after the snapshot). Snapshots of other scans are never offered."""
    if key is not None:
        for path in sorted(recovery_dir().glob(f"*.{key}.recovery.npz"), key=lambda p: p.stat().st_mtime,
                           reverse=True):
            info = _read_info(path)
            if info is not None and info.scan_key == key:
                return info
    path = recovery_path(scan_path)
    if not path.exists():
        return None
    info = _read_info(path)
    if info is None:
        return None
    if info.scan_key is not None:  # a content-keyed file under a path name cannot happen; be safe
        return None if info.scan_key != key else info
    if shape is not None and info.shape != tuple(shape):
        log.warning("ignoring recovery file %s: shape %s does not match the scan %s", path, info.shape, shape)
        return None
    try:
        modified = max(p.stat().st_mtime for p in _scan_files(scan_path))
    except OSError:
        modified = None
    if modified is not None and modified > info.saved_at + 1:
        log.warning("ignoring recovery file %s: the scan %s was modified after it was written (another scan "
                    "under the same name?)", path, scan_path)
        return None
    return info


def _scan_files(scan_path) -> list[Path]:
    from engine.io.volume import files_of

    return [p for p in files_of(scan_path) if p.exists()] or [Path(scan_path)]


def load_recovery(info: RecoveryInfo) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(labels, predicted or None, the labels as opened or None, origin or None)."""
    with np.load(info.path) as z:
        labels = z["labels"].astype(np.uint8)
        predicted = z["predicted"].astype(np.uint8) if "predicted" in z.files else None
        baseline = z["baseline"].astype(np.uint8) if "baseline" in z.files else None
        origin = z["origin"].astype(np.uint8) if "origin" in z.files else None
    return labels, predicted, baseline, origin


def discard_recovery(scan_path: str | os.PathLike, key: str | None = None) -> None:
    for path in ([recovery_path(scan_path, key)] if key is not None else []) + [recovery_path(scan_path)]:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
