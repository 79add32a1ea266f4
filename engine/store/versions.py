"""The versioned model store: the shipped model of each architecture plus every fine-tune (one
folder each under <data dir>/models/<arch>/), which one is active, rollback and comparison.
Nothing is ever overwritten."""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.atomic import atomic_write
from engine.core.paths import data_dir
from engine.nets.weights import ModelInfo, WeightsError, read_model_dir, shipped_model_dir

log = logging.getLogger(__name__)


class MissingVersionError(WeightsError):
    """The active model version's folder is gone (deleted, moved, a disk not mounted)."""

    def __init__(self, arch: str, path: Path):
        self.arch, self.path = arch, path
        super().__init__(f"the active {arch} model version {path.name} is missing ({path} has no model.json): "
                         f"`brainseg models activate shipped --model {arch}` (or the GUI's question) goes back to "
                         "the shipped model; restore the folder to keep using that version")


@dataclass
class VersionEntry:
    version: str
    arch: str
    directory: Path
    parent: str | None
    created: str
    after: dict = field(default_factory=dict)
    shipped: bool = False


class ModelStore:
    """Model versions per architecture: the shipped one plus every fine-tune, and which is active."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else data_dir() / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self.problems: list[str] = []  # what went wrong reading the store, for the GUI and CLI to show

    def _state_path(self) -> Path:
        return self.root / "active.json"

    def _state(self) -> dict:
        """active.json. A corrupt one is never silently taken as "shipped, no history": it is
        kept aside as active.json.corrupt-<time>, reported in the log and in `self.problems`,
        and the store starts again from the shipped models."""
        path = self._state_path()
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
            return state
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError) as exc:
            backup = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, backup)
            msg = (f"{path}: unreadable ({exc}); kept as {backup.name}, the shipped models are active again "
                   "(earlier versions are still in the store: activate one to use it)")
            log.error("%s", msg)
            self.problems.append(msg)
            return {}

    def versions(self, arch: str) -> list[VersionEntry]:
        out = []
        ship = shipped_model_dir(arch)
        if (ship / "model.json").exists():
            meta = json.loads((ship / "model.json").read_text(encoding="utf-8"))
            out.append(VersionEntry(meta.get("version", "shipped"), arch, ship, None,
                                    meta.get("training", {}).get("trained_at", ""), {}, shipped=True))
        d = self.root / arch
        if d.is_dir():
            for sub in sorted(d.iterdir()):
                if (sub / "model.json").exists():
                    try:
                        meta = json.loads((sub / "model.json").read_text(encoding="utf-8"))
                    except (ValueError, UnicodeDecodeError) as exc:
                        msg = f"{sub / 'model.json'}: unreadable ({exc}); that version is not listed"
                        log.warning("%s", msg)
                        self.problems.append(msg)
                        continue
                    out.append(VersionEntry(meta.get("version", sub.name), arch, sub, meta.get("parent"),
                                            meta.get("created", ""), meta.get("after", {})))
        return out

    def new_version_dir(self, arch: str) -> tuple[str, Path]:
        """A new version's name and folder, reserved at once with an exclusive mkdir (issue #20: two
        fine-tunes that overlapped - the panel and the CLI - got the same name, and the later one
        overwrote the earlier one's weights). The folder exists, empty, when this returns."""
        d = self.root / arch
        d.mkdir(parents=True, exist_ok=True)
        n = 1 + max([int(p.name.split("-v")[-1]) for p in d.glob(f"{arch}-v*") if p.name.split("-v")[-1].isdigit()],
                    default=0)
        while True:
            name = f"{arch}-v{n:03d}"
            try:
                (d / name).mkdir()
            except FileExistsError:  # taken meanwhile by another process
                n += 1
                continue
            return name, d / name

    def active_dir(self, arch: str) -> Path:
        """The active version's folder. A version that was made active and is gone is an error
        naming it (issue #20: it fell back to the shipped model without a word);
        `use_shipped(arch)` is the way back."""
        path = self._state().get(arch)
        if not path:
            return shipped_model_dir(arch)
        if (Path(path) / "model.json").exists():
            return Path(path)
        raise MissingVersionError(arch, Path(path))

    def use_shipped(self, arch: str) -> Path:
        """Make the shipped model active again (after a missing version); returns its folder."""
        ship = shipped_model_dir(arch)
        state = self._state()
        state[arch] = str(ship)
        atomic_write(self._state_path(), lambda tmp: tmp.write_text(json.dumps(state, indent=2), encoding="utf-8"))
        return ship

    def activate(self, arch: str, directory: str | os.PathLike) -> None:
        read_model_dir(directory)  # refuse a broken version
        state = self._state()
        history = state.setdefault("history", {}).setdefault(arch, [])
        # the shipped model is active implicitly until something else is: it is the first
        # history entry, so the first fine-tune can be rolled back
        prev = state.get(arch) or str(shipped_model_dir(arch))
        if prev != str(directory):
            history.append(prev)
        state[arch] = str(directory)
        atomic_write(self._state_path(), lambda tmp: tmp.write_text(json.dumps(state, indent=2), encoding="utf-8"))

    def rollback(self, arch: str) -> Path:
        """Make the previously active version active again; returns it."""
        state = self._state()
        history = state.get("history", {}).get(arch, [])
        if not history:
            raise WeightsError(f"no earlier {arch} version to roll back to")
        prev = history.pop()
        state[arch] = prev
        atomic_write(self._state_path(), lambda tmp: tmp.write_text(json.dumps(state, indent=2), encoding="utf-8"))
        return Path(prev)

    @staticmethod
    def compare(a: str | os.PathLike, b: str | os.PathLike) -> dict:
        """Two versions side by side, with Dice only where both were measured on the same data: a
        fine-tune's record holds its parent's Dice ("before") and its own ("after") on the same
        held-back slices, so a parent and its child compare; other pairs get no Dice and a
        `basis` that says why (each version's own figures were measured on different slices)."""
        metas = {}
        out: dict = {}
        for key, d in (("a", a), ("b", b)):
            info: ModelInfo = read_model_dir(d, verify=False)
            metas[key] = (info, info.meta)
            out[key] = {"version": info.version, "parent": info.meta.get("parent"), "created": info.meta.get("created"),
                        "dice": None, "train_slices": info.meta.get("train_slices"), "scan": info.meta.get("scan")}
        (ia, ma), (ib, mb) = metas["a"], metas["b"]
        pair = None
        if mb.get("parent") == ia.version and mb.get("after"):
            pair = ("a", "b", mb, ib.version)
        elif ma.get("parent") == ib.version and ma.get("after"):
            pair = ("b", "a", ma, ia.version)
        if pair:
            parent_key, child_key, rec, child = pair
            out[parent_key]["dice"] = (rec.get("before") or {}).get("dice")
            out[child_key]["dice"] = (rec.get("after") or {}).get("dice")
            out["basis"] = f"the same {len(rec.get('val_slices') or [])} held-back slices of {child}'s fine-tune"
        else:
            out["basis"] = ("not measured on the same slices: compare a version with its parent, or segment "
                            "and correct a scan with each")
        return out


def resolve_model(model: str, weights: str | None) -> tuple[Path, str, str]:
    """(model folder, arch, reason) from a --model choice (auto/unet/enet) and an optional
    --weights (see resolve_weights). Raises WeightsError when none can be found."""
    from engine.core.hardware import choose_model

    if weights:
        d = resolve_weights(weights)
        info = read_model_dir(d)
        if model not in ("auto", info.arch):
            raise WeightsError(f"--model {model} but {weights} holds a {info.arch} model")
        return d, info.arch, f"weights from {weights}" + (f" ({d})" if str(d) != str(weights) else "")
    arch, reason = choose_model(model)
    model_dir = ModelStore().active_dir(arch)
    if not (model_dir / "model.json").exists():
        raise WeightsError(f"no {arch} weights installed (looked in {model_dir}); pass --weights DIR "
                           f"or --model {'enet' if arch == 'unet' else 'unet'}")
    return model_dir, arch, reason


def resolve_weights(spec: str | os.PathLike) -> Path:
    """The model folder a --weights value stands for: a model folder (with model.json), a
    `brainseg train -o` output folder (its best model, `best/`), or a version name from the model
    store (e.g. enet-v003, or a shipped version's name). Raises WeightsError saying what it looked
    for."""
    p = Path(spec)
    if (p / "model.json").is_file():
        return p
    if (p / "best" / "model.json").is_file():  # brainseg train -o OUT
        return p / "best"
    store = ModelStore()
    for arch in ("unet", "enet"):
        for v in store.versions(arch):
            if v.version == str(spec):
                return v.directory
    looked = [str(p / "model.json"), str(p / "best" / "model.json"), f"a version named {spec!s} in {store.root}"]
    if p.is_dir() and (p / "checkpoint").is_dir():
        raise WeightsError(f"{spec}: a training folder without a best model yet (checkpoint/ only): "
                           "let the training finish an epoch, or pass its checkpoint's model folder")
    raise WeightsError(f"{spec}: not a model; looked for {', '.join(looked)}")
