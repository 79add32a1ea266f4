"""Model directories and the shipped-weights manifest (in the manner of GluonCV's model_store).

A model directory holds `model.json` (architecture, version, parent, training record, and the
SHA-256 of the parameters) and `model.params` (Gluon `save_parameters`). The shipped weights live
in resources/weights/<name>/ and are listed with checksums in resources/weights/manifest.json.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.atomic import atomic_write
from engine.core.paths import WEIGHTS_DIR

log = logging.getLogger(__name__)

PARAMS = "model.params"
META = "model.json"


class WeightsError(Exception):
    """A model directory is missing, incomplete or corrupt."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ModelInfo:
    directory: Path
    arch: str
    arch_kwargs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def params_path(self) -> Path:
        return self.directory / PARAMS

    @property
    def version(self) -> str:
        return str(self.meta.get("version", self.directory.name))

    @property
    def class_weights(self) -> tuple[float, ...] | None:
        """model.json `calibration.class_weights`: one positive weight per class (background, CSF,
        GM, WM) that the fused probabilities are multiplied by before the argmax - a prior shift
        (Saerens et al. 2002) that moves a tissue boundary without retraining. None when the model
        has none (every fine-tuned version: the user's corrections define its boundaries)."""
        cal = self.meta.get("calibration") or {}
        w = cal.get("class_weights")
        if w is None:
            return None
        try:
            w = tuple(float(x) for x in w)
        except (TypeError, ValueError):
            w = ()
        if len(w) != 4 or not all(math.isfinite(x) and x > 0 for x in w):
            raise WeightsError(f"{self.directory / META}: calibration.class_weights must be 4 positive "
                               f"numbers (background, CSF, GM, WM), not {cal.get('class_weights')!r}")
        return w


def read_model_dir(directory: str | os.PathLike, verify: bool = True) -> ModelInfo:
    d = Path(directory)
    if not d.is_dir():
        raise WeightsError(f"{d}: not a model directory")
    meta_path = d / META
    if not meta_path.exists():
        raise WeightsError(f"{d}: no {META} (is this a BrainSeg model directory?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{meta_path}: unreadable ({exc})") from exc
    params = d / PARAMS
    if not params.exists():
        raise WeightsError(f"{d}: {PARAMS} is missing")
    if verify and meta.get("sha256"):
        actual = sha256(params)
        if actual != meta["sha256"]:
            raise WeightsError(f"{params}: checksum mismatch (expected {meta['sha256'][:12]}..., "
                               f"got {actual[:12]}...): the file is corrupt or was changed")
    arch = meta.get("arch")
    if arch not in ("unet", "enet"):
        raise WeightsError(f"{meta_path}: unknown arch {arch!r}")
    info = ModelInfo(d, arch, dict(meta.get("arch_kwargs", {})), meta)
    info.class_weights  # a malformed calibration fails here, naming the file
    return info


def write_model_dir(directory: str | os.PathLike, net, arch: str, arch_kwargs: dict | None = None,
                    **meta) -> ModelInfo:
    """Save parameters and metadata atomically; returns the ModelInfo."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    params = d / PARAMS
    atomic_write(params, lambda tmp: net.save_parameters(str(tmp)))
    record = {"arch": arch, "arch_kwargs": arch_kwargs or {}, **meta, "sha256": sha256(params)}
    atomic_write(d / META, lambda tmp: tmp.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8"))
    return ModelInfo(d, arch, arch_kwargs or {}, record)


def shipped_model_dir(arch: str) -> Path:
    return WEIGHTS_DIR / arch


def load_manifest() -> dict:
    path = WEIGHTS_DIR / "manifest.json"
    if not path.exists():
        return {"models": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def update_manifest(arch: str, info: ModelInfo) -> None:
    manifest = load_manifest()
    manifest.setdefault("models", {})[arch] = {
        "path": f"{arch}/{PARAMS}",
        "sha256": info.meta["sha256"],
        "size_bytes": info.params_path.stat().st_size,
        "training": info.meta.get("training", {}),
    }
    atomic_write(WEIGHTS_DIR / "manifest.json",
                 lambda tmp: tmp.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8"))
