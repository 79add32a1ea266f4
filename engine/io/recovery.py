"""Crash recovery: the label map and its edit record, autosaved to a file per scan.

The GUI writes a snapshot every few seconds of idle and on every slice change (in a worker
thread, from a copy of the arrays); after a crash or kill, reopening the scan finds the file and
offers to restore it. Files live in <data dir>/recovery/, named from the scan's absolute path,
and are written atomically, so a kill during a save leaves the previous snapshot intact.
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


@dataclass
class RecoveryInfo:
    path: Path
    scan: str
    saved_at: float
    edit_count: int
    edited_slices: list[int]
    edited_pairs: list | None = None  # (array axis, slice) corrected in that plane; None in older files

    @property
    def saved_at_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.saved_at))


def recovery_dir() -> Path:
    d = data_dir() / "recovery"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def recovery_path(scan_path: str | os.PathLike) -> Path:
    key = hashlib.sha1(str(Path(scan_path).resolve()).encode()).hexdigest()[:16]
    return recovery_dir() / f"{Path(scan_path).name}.{key}.recovery.npz"


def save_recovery(scan_path: str | os.PathLike, labels: np.ndarray, edited_slices: list[int],
                  edit_count: int, predicted: np.ndarray | None = None, edited_pairs: list | None = None,
                  baseline: np.ndarray | None = None) -> Path:
    """Write the snapshot atomically; returns its path. `edit_count` is the number of edits not
    saved yet (what a restore brings back)."""
    path = recovery_path(scan_path)
    meta = {"scan": str(Path(scan_path).resolve()), "saved_at": time.time(), "edit_count": int(edit_count),
            "edited_slices": [int(k) for k in edited_slices], "shape": list(labels.shape)}
    if edited_pairs is not None:
        meta["edited"] = [[int(a), int(k)] for a, k in edited_pairs]
    buf = io.BytesIO()
    arrays = {"labels": labels, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    if predicted is not None:
        arrays["predicted"] = predicted
    if baseline is not None:  # the labels as opened, where the network has not run: what edits are measured against
        arrays["baseline"] = baseline
    np.savez_compressed(buf, **arrays)
    atomic_write(path, lambda tmp: tmp.write_bytes(buf.getvalue()), mode=0o600)  # labels of a patient: private
    return path


def find_recovery(scan_path: str | os.PathLike, shape: tuple[int, ...] | None = None) -> RecoveryInfo | None:
    path = recovery_path(scan_path)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
    except Exception as exc:  # a corrupt snapshot must not stop the scan from opening
        log.warning("ignoring unreadable recovery file %s: %s", path, exc)
        return None
    if shape is not None and tuple(meta.get("shape", ())) != tuple(shape):
        log.warning("ignoring recovery file %s: shape %s does not match the scan %s", path, meta.get("shape"), shape)
        return None
    return RecoveryInfo(path, meta["scan"], float(meta["saved_at"]), int(meta["edit_count"]),
                        list(meta.get("edited_slices", [])), meta.get("edited"))


def load_recovery(info: RecoveryInfo) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(labels, predicted or None, the labels as opened or None)."""
    with np.load(info.path) as z:
        labels = z["labels"].astype(np.uint8)
        predicted = z["predicted"].astype(np.uint8) if "predicted" in z.files else None
        baseline = z["baseline"].astype(np.uint8) if "baseline" in z.files else None
    return labels, predicted, baseline


def discard_recovery(scan_path: str | os.PathLike) -> None:
    try:
        recovery_path(scan_path).unlink()
    except FileNotFoundError:
        pass
