"""Training from scratch on OASIS-1 (or any folder of scan/label pairs): `brainseg train`.

The seed tutorial's pipeline, done properly: subjects are found through their headers (OASIS-1
``PROCESSED/MPRAGE/T88_111/*t88[_masked]_gfc.hdr`` with ``FSL_SEG/*fseg.hdr``, or ``NAME.nii.gz`` +
``NAME_seg.nii.gz`` pairs), split 80/20 *by subject* (never by slice), every non-empty axial slice of
the training subjects is normalised per volume and learned from, with optional augmentation,
class-weighted CE + soft Dice, Adam with a cosine schedule. After every epoch: hard Dice per class
on the validation subjects (through the same `Segmenter` the app uses), the best model so far in
``OUTDIR/best`` (a normal model directory) and a resumable checkpoint in ``OUTDIR/checkpoint``
(parameters, optimizer state, ``state.json`` with epoch/step/best/history). ``--resume`` continues
it; the data order depends only on (seed, epoch, rank), so a resumed run sees what an uninterrupted
one would have.

With ``--workers N --servers M`` the same command is re-run as N data-parallel workers on MXNet's
parameter server (see `engine.train.dist`): each worker loads only its shard of the training subjects,
rank 0 validates and writes the model directories.

    brainseg train /data/oasis --model unet --epochs 30 -o runs/oasis-unet
    python -m engine.train.oasis /data/oasis --model enet --workers 2 --servers 1 -o runs/oasis-enet
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from engine.core.atomic import atomic_write
from engine.core.cancel import Cancelled, CancelToken
from engine.core.classes import NUM_CLASSES
from engine.core.metrics import confusion_matrix, dice_from_confusion, mean_tissue_dice
from engine.infer.preprocess import SlicePadding, normalise
from engine.io.volume import read_volume
from engine.train.augment import AugmentConfig, augment_pair
from engine.train.loop import SEED_CLASS_WEIGHTS, FitConfig, FitProgress, hybridize_for_training, make_trainer

log = logging.getLogger(__name__)

PLAIN_EXTS = (".nii.gz", ".nii", ".hdr")
LABEL_TAGS = ("_seg", "_fseg", "_labels")
KVSTORES = ("local", "device", "dist_sync", "dist_device_sync")
OPTIMIZERS = ("adam", "sgd")
DEFAULT_BATCH = {"unet": 4, "enet": 8}  # the seed's per-step batch on a laptop


@dataclass(frozen=True)
class Subject:
    id: str
    image_path: Path
    label_path: Path


# ------------------------------------------------------------------------------ finding data
def _strip_ext(name: str) -> tuple[str, str] | None:
    low = name.lower()
    for ext in PLAIN_EXTS:
        if low.endswith(ext):
            return name[: -len(ext)], ext
    return None


def _oasis_subject(sd: Path) -> tuple[Subject | None, str | None]:
    """One OASIS-1 session folder -> (subject, None) or (None, what is missing)."""
    t88 = sd / "PROCESSED" / "MPRAGE" / "T88_111"
    masked = sorted(t88.glob("*t88_masked_gfc.hdr")) if t88.is_dir() else []
    plain = sorted(t88.glob("*t88_gfc.hdr")) if t88.is_dir() else []
    images = masked or plain
    fseg = sorted((sd / "FSL_SEG").glob("*fseg.hdr")) if (sd / "FSL_SEG").is_dir() else []
    if not images:
        return None, "no PROCESSED/MPRAGE/T88_111/*t88_gfc.hdr image"
    if not fseg:
        return None, "no FSL_SEG/*fseg.hdr labels"
    return Subject(sd.name, images[0], fseg[0]), None


def find_subjects(data_dir: str | os.PathLike) -> list[Subject]:
    """Training subjects under data_dir, sorted by id.

    OASIS-1 layout: ``OAS1_xxxx_MR1/`` (directly or one folder down, as on the OASIS discs) with
    ``PROCESSED/MPRAGE/T88_111/*t88_masked_gfc.hdr`` (preferred) or ``*t88_gfc.hdr`` and
    ``FSL_SEG/*fseg.hdr``. Plain layout: ``NAME.nii.gz`` (or .nii/.hdr) with ``NAME_seg``,
    ``NAME_fseg`` or ``NAME_labels`` (any of those extensions) beside it. Subjects missing their
    labels are skipped with a warning; ValueError naming the folder when none is complete.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise ValueError(f"{d}: not a folder")
    found: dict[str, Subject] = {}
    incomplete: list[tuple[str, str]] = []
    sessions = sorted({p for p in list(d.glob("OAS1_*_MR*")) + list(d.glob("*/OAS1_*_MR*")) if p.is_dir()})
    for sd in sessions:
        subject, missing = _oasis_subject(sd)
        if subject is None:
            incomplete.append((sd.name, missing or ""))
        elif subject.id not in found:
            found[subject.id] = subject
    files = {p.name: p for p in d.iterdir() if p.is_file()}
    for name, path in sorted(files.items()):
        split = _strip_ext(name)
        if split is None or split[0].lower().endswith(LABEL_TAGS):
            continue
        stem = split[0]
        label = next((files[stem + tag + ext] for tag in LABEL_TAGS for ext in PLAIN_EXTS
                      if stem + tag + ext in files), None)
        if label is None:
            incomplete.append((name, f"no {stem}_seg / _fseg / _labels file beside it"))
        elif stem not in found:
            found[stem] = Subject(stem, path, label)
    if not found:
        if incomplete:
            detail = "; ".join(f"{n}: {why}" for n, why in incomplete[:5])
            more = f" (and {len(incomplete) - 5} more)" if len(incomplete) > 5 else ""
            raise ValueError(f"{d}: {len(incomplete)} subject(s) found but none has both a scan and labels: "
                             f"{detail}{more}")
        raise ValueError(f"{d}: no training subjects found; expected OASIS-1 folders OAS1_xxxx_MR1 with "
                         "PROCESSED/MPRAGE/T88_111/*t88_gfc.hdr and FSL_SEG/*fseg.hdr, or pairs "
                         "NAME.nii.gz + NAME_seg.nii.gz")
    for n, why in incomplete:
        log.warning("%s: skipping %s: %s", d, n, why)
    return [found[k] for k in sorted(found)]


def person_of(subject_id: str) -> str:
    """The person a scan belongs to: OASIS-1 re-scans the same person in a second session
    (OAS1_0001_MR1 and OAS1_0001_MR2), so the session suffix is dropped; BIDS-like _ses-X too."""
    return re.sub(r"(_MR\d+|_ses-[A-Za-z0-9]+)$", "", subject_id)


def split_subjects(subjects: list[Subject], val_fraction: float = 0.2,
                   seed: int = 1984) -> tuple[list[Subject], list[Subject]]:
    """Split by person (scikit-learn GroupShuffleSplit, random_state=seed, on the id-sorted list):
    every scan of one person lands on the same side, so a re-scan never validates its own
    twin. round(n_people * val_fraction) people go to validation (at least one, and at least one
    left for training, when there are two or more). Deterministic; returns (train, val), each
    sorted by id."""
    from sklearn.model_selection import GroupShuffleSplit

    subs = sorted(subjects, key=lambda s: s.id)
    groups = [person_of(s.id) for s in subs]
    people = len(set(groups))
    if people < 2 or val_fraction <= 0:
        return subs, []
    n_val = min(max(1, int(round(people * val_fraction))), people - 1)
    split = GroupShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    tr_idx, va_idx = next(split.split(np.zeros(len(subs)), groups=groups))
    return [subs[i] for i in sorted(tr_idx)], [subs[i] for i in sorted(va_idx)]


def load_subject(subject: Subject) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8) of one subject, checked to share a grid, on the networks'
    grid (engine/io/conform.py: LAS, 1 mm; an OASIS file is used as stored, a NIfTI in another
    orientation or voxel size is reoriented and resampled, its labels one-hot)."""
    from engine.io.conform import Conform

    image = read_volume(subject.image_path, kind="image")
    labels = read_volume(subject.label_path, kind="labels")
    if image.shape != labels.shape:
        raise ValueError(f"{subject.id}: scan {subject.image_path.name} is {image.shape} but labels "
                         f"{subject.label_path.name} are {labels.shape}")
    geo = Conform.for_grid(image.shape, image.affine)
    if geo.identity:
        return image.data, labels.data
    log.info("%s: %s", subject.id, geo.describe())
    return geo.to_work(image.data), geo.labels_to_work(labels.data, NUM_CLASSES)


def export_png_pairs(subjects: list[Subject], out_dir: str | os.PathLike) -> int:
    """Write every axial slice as ``images/<id>_<k>.png`` (uint8, the volume scaled to 0-255 after
    per-volume normalisation) and ``labels/<id>_<k>.png`` (values 0-3), as the seed did. Rows are the
    first array axis. Returns the number of pairs written."""
    import imageio.v3 as iio

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    n = 0
    for s in subjects:
        image, labels = load_subject(s)
        norm = normalise(image)
        top = float(norm.max()) or 1.0
        img8 = np.round(norm / top * 255.0).astype(np.uint8)
        for k in range(image.shape[2]):
            iio.imwrite(out / "images" / f"{s.id}_{k:03d}.png", img8[:, :, k])
            iio.imwrite(out / "labels" / f"{s.id}_{k:03d}.png", labels[:, :, k].astype(np.uint8))
            n += 1
    log.info("exported %d PNG pairs of %d subjects to %s", n, len(subjects), out)
    return n


# ------------------------------------------------------------------------------ slices and weights
@dataclass
class SliceSet:
    """Non-empty axial slices of some subjects, normalised and padded to one shape."""

    images: np.ndarray  # (N, PH, PW) float16 (halves the memory of a few hundred OASIS scans)
    labels: np.ndarray  # (N, PH, PW) uint8
    origin: list[tuple[str, int]]  # (subject id[/plane], slice index) per slice; no plane: axial
    class_counts: np.ndarray  # (classes,) voxels of each class (unpadded)
    present_counts: np.ndarray  # (classes,) voxels of the slices in which each class appears

    def __len__(self) -> int:
        return len(self.origin)


def load_slices(subjects: list[Subject], multiple: int, planes: tuple[str, ...] = ("axial",)) -> SliceSet:
    """The labelled slices of each subject in each anatomical plane (on the networks' LAS grid:
    axial [:, :, k], coronal [:, j, :], sagittal [i, :, :]), normalised, padded to one shape."""
    from engine.io.conform import PLANE_AXIS

    per_subject = []
    counts = np.zeros(NUM_CLASSES, np.float64)
    present = np.zeros(NUM_CLASSES, np.float64)
    for s in subjects:
        image, labels = load_subject(s)
        norm = normalise(image)
        for plane in planes:
            ax = PLANE_AXIS[plane]
            ks = np.where((labels > 0).any(axis=tuple(a for a in range(3) if a != ax)))[0]
            if len(ks) == 0:
                log.warning("%s: no labelled slice, nothing to learn from", s.id)
                continue
            imgs = np.moveaxis(np.take(norm, ks, axis=ax), ax, 0)
            labs = np.moveaxis(np.take(labels, ks, axis=ax), ax, 0)
            for lab in labs:
                c = np.bincount(lab.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
                counts += c
                present += (c > 0) * lab.size
            per_subject.append((s.id if plane == "axial" else f"{s.id}/{plane}", ks, imgs, labs))
    if not per_subject:
        raise ValueError("none of the training subjects has a labelled slice")
    h = max(p[2].shape[1] for p in per_subject)
    w = max(p[2].shape[2] for p in per_subject)
    pad_shape = SlicePadding.for_shape((h, w), multiple).padded
    n = sum(len(p[1]) for p in per_subject)
    images = np.zeros((n,) + pad_shape, np.float16)
    labels_out = np.zeros((n,) + pad_shape, np.uint8)
    origin: list[tuple[str, int]] = []
    i = 0
    for sid, ks, imgs, labs in per_subject:
        pad = SlicePadding(imgs.shape[1:], pad_shape)
        oy, ox = pad.offsets()
        images[i:i + len(ks), oy:oy + imgs.shape[1], ox:ox + imgs.shape[2]] = imgs
        labels_out[i:i + len(ks), oy:oy + imgs.shape[1], ox:ox + imgs.shape[2]] = labs
        origin += [(sid, int(k)) for k in ks]
        i += len(ks)
    return SliceSet(images, labels_out, origin, counts, present)


def median_frequency_weights(class_counts, present_counts) -> tuple[float, ...]:
    """Eigen & Fergus (2015): w_c = median(freq) / freq_c with freq_c = voxels of class c / voxels
    of the slices where c appears. A class never seen gets weight 1."""
    counts = np.asarray(class_counts, np.float64)
    present = np.asarray(present_counts, np.float64)
    seen = (counts > 0) & (present > 0)
    if not seen.any():
        return tuple(1.0 for _ in counts)
    freq = np.where(seen, counts / np.where(present > 0, present, 1), 0.0)
    med = float(np.median(freq[seen]))
    return tuple(float(med / f) if s else 1.0 for f, s in zip(freq, seen))


# ------------------------------------------------------------------------------ config and results
@dataclass
class TrainConfig:
    data_dir: str
    output: str
    model: str = "unet"
    epochs: int = 30
    batch_size: int | None = None  # per worker; None: 4 (U-Net) or 8 (ENet)
    lr: float = 1e-3
    lr_min: float = 1e-5
    optimizer: str = "adam"  # adam (beta1 0.9, beta2 0.99, as engine.train.loop) | sgd (momentum 0.9)
    augment: bool = True
    class_weights: str = "seed"  # seed (SEED_CLASS_WEIGHTS) | median (median frequency of the training labels)
    dice_weight: float = 1.0
    val_fraction: float = 0.2
    seed: int = 1984
    unet_base: int = 32
    unet_levels: int = 5
    init_weights: str | None = None  # a .params file or model directory to start from
    resume: bool = False
    export_png: str | None = None
    kvstore: str = "device"
    val_batch_size: int = 8
    log_every: int = 20
    # anatomical planes whose slices are trained on (engine/io/conform.py); the networks segment by
    # fusing all three, so they learn all three. ("axial",) holds a third of the memory.
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")

    def arch_kwargs(self) -> dict:
        return {"base": self.unet_base, "levels": self.unet_levels} if self.model == "unet" else {}

    def per_worker_batch(self) -> int:
        return int(self.batch_size or DEFAULT_BATCH.get(self.model, 4))

    def check(self) -> None:
        if self.model not in DEFAULT_BATCH:
            raise ValueError(f"unknown model {self.model!r}; choose one of: {', '.join(DEFAULT_BATCH)}")
        if self.kvstore not in KVSTORES:
            raise ValueError(f"unknown kvstore {self.kvstore!r}; choose one of: {', '.join(KVSTORES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.class_weights not in ("seed", "median"):
            raise ValueError(f"class weights must be 'seed' or 'median', not {self.class_weights!r}")
        if self.epochs < 0 or self.per_worker_batch() < 1:
            raise ValueError("epochs must be >= 0 and the batch size >= 1")


@dataclass
class TrainProgress:
    kind: str  # "step" during an epoch, "epoch" after its validation
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    lr: float
    elapsed_s: float
    val_dice: dict | None = None
    val_score: float | None = None
    best: bool = False

    @property
    def eta_s(self) -> float:
        return self.elapsed_s / max(self.step, 1) * max(0, self.steps - self.step)

    def line(self) -> str:
        loss = "-" if math.isnan(self.loss) else f"{self.loss:.4f}"
        head = f"epoch {self.epoch}/{self.epochs} step {self.step}/{self.steps} loss {loss}"
        if self.kind == "step":
            return f"{head} lr {self.lr:.2e} ({self.elapsed_s:.0f} s, ~{self.eta_s:.0f} s left)"
        dice = ", ".join(f"{k} {v:.3f}" for k, v in (self.val_dice or {}).items() if k != "background" and v is not None)
        score = f" (mean {self.val_score:.4f})" if self.val_score is not None and not math.isnan(self.val_score) else ""
        return f"{head} val Dice {dice or '-'}{score}{' best' if self.best else ''} ({self.elapsed_s:.0f} s)"


@dataclass
class TrainResult:
    output: Path
    best_dir: Path
    checkpoint_dir: Path
    epochs_done: int
    steps: int
    best_epoch: int | None
    best_dice: dict
    best_score: float | None
    history: list[dict]
    train_subjects: list[str]
    val_subjects: list[str]
    seconds: float
    rank: int = 0
    num_workers: int = 1
    params_sha256: str = ""
    worker_subjects: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ checkpoints
def _replace_dir(dst: Path, write: Callable[[Path], None]) -> None:
    """Write a directory next to dst, then swap it in (dst.old survives a crash mid-swap)."""
    tmp, old = dst.with_name(f".{dst.name}.tmp"), dst.with_name(f".{dst.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint_dir(out: Path) -> Path | None:
    for d in (out / "checkpoint", out / ".checkpoint.old"):
        if (d / "state.json").exists():
            return d
    return None


def _build_trainer(net, cfg: TrainConfig, kv):
    """make_trainer with this run's optimizer; distributed: the cluster's kvstore, updates on the workers."""
    if kv is not None:
        return make_trainer(net, cfg, kvstore=kv, optimizer=cfg.optimizer, update_on_kvstore=False)
    return make_trainer(net, cfg, kvstore=cfg.kvstore, optimizer=cfg.optimizer)


def _init_weights(net, ctx, slice_shape: tuple[int, ...], seed: int, init_from: str | None) -> None:
    """Xavier initialisation from `seed`, or the parameters in `init_from` (.params or model dir)."""
    from engine.core.mx_env import get_mx
    from engine.train.loop import init_network

    mx = get_mx()
    mx.random.seed(seed)
    np.random.seed(seed)
    init_network(net, ctx)
    # Finish Gluon's deferred shapes with one forward in *training* mode: an inference-mode forward
    # lets oneDNN reorder the conv weights in place into its own layout, which the kvstore cannot
    # push ("We can't generate TBlob for MKLDNN data"). That forward moved the BatchNorm running
    # statistics, so put them back to their initial values.
    with mx.autograd.train_mode():
        net(mx.nd.zeros((1, 1) + tuple(slice_shape), ctx=ctx))
    for p in net.collect_params().values():
        if p.grad_req == "null":
            p.initialize(ctx=ctx, force_reinit=True)
    if init_from:
        src = Path(init_from)
        net.load_parameters(str(src / "model.params" if src.is_dir() else src), ctx=ctx)


def _epoch_batches(slices: SliceSet, epoch: int, rank: int, steps: int, batch: int, cfg: TrainConfig,
                   aug: AugmentConfig) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`steps` batches from a shuffled pass over this worker's slices (cycled when it holds fewer
    than steps * batch). Order and augmentation depend only on (seed, epoch, rank)."""
    rng = np.random.default_rng([cfg.seed, epoch, rank])
    need = steps * batch
    order = np.concatenate([rng.permutation(len(slices)) for _ in range(-(-need // len(slices)))])[:need]
    for s in range(steps):
        idx = order[s * batch:(s + 1) * batch]
        xs = slices.images[idx].astype(np.float32)
        ys = slices.labels[idx]
        if cfg.augment:
            pairs = [augment_pair(x, y, rng, aug) for x, y in zip(xs, ys)]
            xs = np.stack([p[0] for p in pairs])
            ys = np.stack([p[1] for p in pairs])
        yield xs[:, None], ys


def validate(net, arch: str, arch_kwargs: dict, subjects: list[Subject], ctx=None, batch_size: int = 8) -> dict:
    """Hard Dice per class and confusion matrix over the labelled axial slices of `subjects`."""
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.nets.weights import ModelInfo

    seg = Segmenter.from_network(net, ModelInfo(Path("."), arch, arch_kwargs, {"version": "training"}), ctx=ctx)
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for s in subjects:
        image, labels = load_subject(s)
        ks = [int(k) for k in np.where((labels > 0).any(axis=(0, 1)))[0]]
        if not ks:
            continue
        pred = seg.segment(image, SegmentConfig(batch_size=batch_size, slices=tuple(ks))).labels
        cm += confusion_matrix(labels[:, :, ks], pred[:, :, ks])
    dice = dice_from_confusion(cm)
    return {"dice": dice, "mean_tissue_dice": mean_tissue_dice(dice), "confusion_matrix": cm.tolist()}


# ------------------------------------------------------------------------------ training
def train(config: TrainConfig, progress: Callable[[TrainProgress], None] | None = None,
          cancel: CancelToken | None = None) -> TrainResult:
    """Train `config.model` on the subjects in `config.data_dir`; see the module docstring.

    With a ``dist_*`` kvstore this process must be a worker of a running cluster (engine.train.dist).
    Raises ValueError for unusable data or options, Cancelled when `cancel` is set (the last
    epoch's checkpoint stays)."""
    from engine.core.mx_env import default_context, get_mx

    cfg = config
    cfg.check()
    t0 = time.time()
    mx = get_mx()
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir
    from engine.train.loop import fit

    out = Path(cfg.output)
    ckpt_src = _checkpoint_dir(out)
    if cfg.resume and ckpt_src is None:
        raise ValueError(f"{out}: no checkpoint to resume from (expected {out / 'checkpoint' / 'state.json'})")
    if not cfg.resume and ckpt_src is not None:
        raise ValueError(f"{out} already holds a training checkpoint: pass --resume to continue it, "
                         "or choose another output folder")

    dist = None
    if cfg.kvstore.startswith("dist"):
        from engine.train.dist import DistContext

        dist = DistContext(cfg.kvstore)
    rank, nworkers = (dist.rank, dist.num_workers) if dist else (0, 1)
    subjects = find_subjects(cfg.data_dir)
    train_s, val_s = split_subjects(subjects, cfg.val_fraction, cfg.seed)
    if len(train_s) < nworkers:
        raise ValueError(f"{nworkers} workers but only {len(train_s)} training subject(s): each worker "
                         "needs at least one")
    mine = train_s[rank::nworkers]
    if rank == 0 and cfg.export_png and dist is None:
        export_png_pairs(subjects, cfg.export_png)

    ctx = default_context()
    arch_kwargs = cfg.arch_kwargs()
    net = get_model(cfg.model, **arch_kwargs)
    multiple = int(net.multiple)
    slices = load_slices(mine, multiple, tuple(config.planes))
    log.info("rank %d: %d training slices from %d subject(s) (%d in all, %d for validation)", rank, len(slices),
             len(mine), len(train_s), len(val_s))

    # Numbers every worker must agree on: slices in all (steps per epoch) and class frequencies.
    total_slices = len(slices)
    counts, present = slices.class_counts, slices.present_counts
    if dist:
        red = dist.allreduce({"n": np.array([len(slices)]), "counts": counts, "present": present})
        total_slices, counts, present = int(round(red["n"][0])), red["counts"], red["present"]
    batch = cfg.per_worker_batch()
    steps_per_epoch = max(1, -(-total_slices // (batch * nworkers)))
    weights = SEED_CLASS_WEIGHTS if cfg.class_weights == "seed" else median_frequency_weights(counts, present)
    total_steps = cfg.epochs * steps_per_epoch

    _init_weights(net, ctx, slices.images.shape[1:], cfg.seed, cfg.init_weights)
    state: dict = {"epoch": 0, "step": 0, "best_score": None, "best_epoch": None, "history": []}
    if cfg.resume:
        assert ckpt_src is not None
        state = json.loads((ckpt_src / "state.json").read_text(encoding="utf-8"))
        if state.get("arch") != cfg.model or state.get("arch_kwargs") != arch_kwargs:
            raise ValueError(f"{ckpt_src}: the checkpoint is a {state.get('arch')} {state.get('arch_kwargs')}, "
                             f"not a {cfg.model} {arch_kwargs}")
        if state.get("steps_per_epoch") not in (None, steps_per_epoch):
            log.warning("steps per epoch changed from %s to %d (different data or batch size)",
                        state.get("steps_per_epoch"), steps_per_epoch)
        net.load_parameters(str(ckpt_src / "model.params"), ctx=ctx)
    hybridize_for_training(net)
    trainer = _build_trainer(net, cfg, dist.kv if dist else None)
    if dist:
        dist.init_trainer(trainer)
    if cfg.resume:
        trainer.load_states(str(ckpt_src / "trainer.states"))

    fit_cfg = FitConfig(steps=total_steps, batch_size=batch * nworkers, lr=cfg.lr, lr_min=cfg.lr_min,
                        class_weights=tuple(weights), dice_weight=cfg.dice_weight,
                        log_every=max(1, min(cfg.log_every, steps_per_epoch)))
    gscale = dist.grad_scale if dist else 1.0
    aug = AugmentConfig()
    meta_common = {
        "train_subjects": [s.id for s in train_s], "val_subjects": [s.id for s in val_s],
        "data_dir": str(Path(cfg.data_dir).resolve()), "workers": nworkers, "batch_size_per_worker": batch,
        "class_weights": list(weights), "settings": asdict(cfg),
        "loss": "class-weighted softmax CE + soft Dice", "optimizer": f"{cfg.optimizer} lr {cfg.lr:g} cosine",
    }
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    t_train = time.time()
    start_epoch = int(state["epoch"])
    if int(state["step"]) != start_epoch * steps_per_epoch:
        log.warning("the checkpoint is at step %s; counting on from step %d (epoch %d x %d steps)", state["step"],
                    start_epoch * steps_per_epoch, start_epoch, steps_per_epoch)
    cur = {"epoch": start_epoch, "loss": float("nan")}

    def all_batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for e in range(start_epoch + 1, cfg.epochs + 1):
            cur["epoch"] = e
            # Dropout masks (ENet) from (seed, epoch, rank) too, so a resumed run repeats them.
            mx.random.seed(int(np.random.SeedSequence([cfg.seed, e, rank]).generate_state(1)[0] % (2**31)))
            yield from _epoch_batches(slices, e, rank, steps_per_epoch, batch, cfg, aug)

    def on_step(p: FitProgress) -> None:
        cur["loss"] = p.loss  # fit's running mean (it reads each loss one step late)
        if progress and rank == 0:
            progress(TrainProgress("step", cur["epoch"], cfg.epochs, p.step, total_steps, p.loss, p.lr,
                                   time.time() - t_train))

    def end_of_epoch(step: int) -> None:
        epoch = cur["epoch"]
        if dist:
            dist.average_aux(net)
        state.update(epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, arch=cfg.model, arch_kwargs=arch_kwargs)
        if rank != 0:
            return
        ev = validate(net, cfg.model, arch_kwargs, val_s, ctx, cfg.val_batch_size) if val_s else None
        score = ev["mean_tissue_dice"] if ev else None
        prev = state["best_score"]
        is_best = ev is None or prev is None or (score is not None and not math.isnan(score) and score > prev)
        loss = cur["loss"]
        state["history"].append({"epoch": epoch, "step": step, "loss": None if math.isnan(loss) else round(loss, 5),
                                 "val_dice": ev["dice"] if ev else None, "val_mean_tissue_dice": score,
                                 "elapsed_s": round(time.time() - t_train, 2)})
        if is_best:
            state.update(best_score=score, best_epoch=epoch)
            meta = dict(meta_common, version=f"{cfg.model}-oasis-e{epoch}", epoch=epoch, step=step,
                        dice=ev["dice"] if ev else None, mean_tissue_dice=score,
                        confusion_matrix=ev["confusion_matrix"] if ev else None,
                        created=time.strftime("%Y-%m-%d %H:%M:%S"))
            _replace_dir(out / "best", lambda d: write_model_dir(d, net, cfg.model, arch_kwargs, **meta))

        def write_checkpoint(d: Path) -> None:
            write_model_dir(d, net, cfg.model, arch_kwargs, version=f"{cfg.model}-checkpoint-e{epoch}",
                            epoch=epoch, step=step, **meta_common)
            trainer.save_states(str(d / "trainer.states"))
            atomic_write(d / "state.json", lambda tmp: tmp.write_text(json.dumps(state, indent=1, default=str),
                                                                      encoding="utf-8"))

        _replace_dir(out / "checkpoint", write_checkpoint)
        if progress:
            progress(TrainProgress("epoch", epoch, cfg.epochs, step, total_steps, loss, trainer.learning_rate,
                                   time.time() - t_train, ev["dice"] if ev else None, score, is_best))

    # One fit() over all remaining epochs (its running loss carries across them); the end of each
    # epoch is its checkpoint hook. A cancel is seen at the next batch.
    step = fit(net, all_batches(), fit_cfg, ctx, on_progress=on_step, cancel=cancel, trainer=trainer,
               start_step=start_epoch * steps_per_epoch, on_checkpoint=end_of_epoch,
               checkpoint_every=steps_per_epoch, grad_scale=gscale)

    from engine.train.dist import params_digest

    digest = params_digest(net)
    best_rec = next((h for h in state["history"] if h["epoch"] == state.get("best_epoch")), {})
    result = TrainResult(out, out / "best", out / "checkpoint", int(state["epoch"]), step, state.get("best_epoch"),
                         best_rec.get("val_dice") or {}, state.get("best_score"), list(state["history"]), [s.id for s in train_s],
                         [s.id for s in val_s], time.time() - t0, rank, nworkers, digest, [s.id for s in mine])
    if dist:
        wdir = out / "workers"
        wdir.mkdir(parents=True, exist_ok=True)
        info = {"rank": rank, "num_workers": nworkers, "subjects": result.worker_subjects, "slices": len(slices),
                "steps": step, "epochs_done": result.epochs_done, "params_sha256": digest,
                "grad_scale": gscale, "pid": os.getpid()}
        atomic_write(wdir / f"rank{rank}.json", lambda tmp: tmp.write_text(json.dumps(info, indent=1),
                                                                           encoding="utf-8"))
        del trainer
        dist.barrier()
        dist.close()
    return result


# ------------------------------------------------------------------------------ command line
_FORWARDED_OPTIONS = (  # (flag, dest): what a worker gets from the launcher's command line
    ("--model", "model"), ("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--lr", "lr"),
    ("--optimizer", "optimizer"), ("--class-weights", "class_weights"), ("--val-fraction", "val_fraction"),
    ("--seed", "seed"), ("--unet-base", "unet_base"), ("--unet-levels", "unet_levels"),
    ("--init-weights", "init_weights"), ("--dice-weight", "dice_weight"), ("--log-every", "log_every"),
    ("--planes", "planes"),
)
_FORWARDED_FLAGS = (("--resume", "resume"), ("--no-augment", "no_augment"))


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", metavar="DATA_DIR", help="OASIS-1 folder (OAS1_xxxx_MR1/...) or NAME + NAME_seg pairs")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="best/ and checkpoint/ go here")
    p.add_argument("--model", choices=("unet", "enet"), default="unet")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=None, help="per worker (default 4 for U-Net, 8 for ENet)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--class-weights", choices=("seed", "median"), default="seed",
                   help="the seed's fixed weights or median-frequency weights of the training labels")
    p.add_argument("--dice-weight", type=float, default=1.0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=1984)
    p.add_argument("--no-augment", action="store_true", help="train on the slices as they are")
    p.add_argument("--unet-base", type=int, default=32, help="U-Net filters at the first level")
    p.add_argument("--unet-levels", type=int, default=5)
    p.add_argument("--init-weights", metavar="PATH", help="start from this .params file or model directory")
    p.add_argument("--resume", action="store_true", help="continue from OUTDIR/checkpoint")
    p.add_argument("--export-png", metavar="DIR", help="also write every slice as PNG image/label pairs")
    p.add_argument("--log-every", type=int, default=20, help="steps between progress lines")
    p.add_argument("--planes", default=None, help="anatomical planes to train on (default axial,coronal,sagittal; "
                   "'axial' needs a third of the memory)")
    p.add_argument("--kvstore", choices=KVSTORES, default=None,
                   help="device (default) or local for one process; dist_sync / dist_device_sync for a worker "
                        "of a parameter-server cluster (the default with --workers)")
    p.add_argument("--workers", type=int, default=0, help="start a local cluster with N workers")
    p.add_argument("--servers", type=int, default=1, help="parameter servers of that cluster")
    p.add_argument("--timeout", type=float, default=48 * 3600.0, help="kill the local cluster after this many seconds")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)


def add_train_parser(sub) -> None:
    """Register `brainseg train` on the CLI's subparsers."""
    p = sub.add_parser("train", help="train a network from scratch on OASIS-1 (optionally on a local cluster)")
    _train_args(p)
    p.set_defaults(func=run_train)


def config_from_args(args) -> TrainConfig:
    kv = args.kvstore or ("dist_sync" if args.workers else "device")
    return TrainConfig(
        data_dir=str(args.data_dir), output=str(args.output), model=args.model, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, augment=not args.no_augment,
        class_weights=args.class_weights, dice_weight=args.dice_weight, val_fraction=args.val_fraction,
        seed=args.seed, unet_base=args.unet_base, unet_levels=args.unet_levels, init_weights=args.init_weights,
        resume=args.resume, export_png=args.export_png, kvstore=kv, log_every=args.log_every,
        planes=_planes(args.planes))


def _planes(text: str | None) -> tuple[str, ...]:
    from engine.io.conform import PLANES

    if not text:
        return PLANES
    planes = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    if not planes or any(p not in PLANES for p in planes):
        raise ValueError(f"--planes {text!r}: choose from {', '.join(PLANES)} (comma-separated)")
    return planes


def worker_argv(args) -> list[str]:
    """The command each worker of a local cluster runs: this one, minus the launcher options."""
    argv = [sys.executable, "-m", "engine.train.oasis", str(Path(args.data_dir).resolve()),
            "-o", str(Path(args.output).resolve())]
    for flag, dest in _FORWARDED_OPTIONS:
        value = getattr(args, dest)
        if value is not None:
            argv += [flag, str(Path(value).resolve()) if dest == "init_weights" else str(value)]
    argv += [flag for flag, dest in _FORWARDED_FLAGS if getattr(args, dest)]
    return argv + ["--kvstore", args.kvstore or "dist_sync", "--_worker"]


def _print_progress(p: TrainProgress) -> None:
    print(p.line(), file=sys.stderr if p.kind == "step" else sys.stdout, flush=True)


def _launch(args) -> int:
    from engine.train.dist import DIST_KVSTORES, launch_local

    kv = args.kvstore or "dist_sync"
    if kv not in DIST_KVSTORES:
        raise ValueError(f"--workers needs a distributed kvstore ({', '.join(DIST_KVSTORES)}), not {kv}")
    if args.servers < 1:
        raise ValueError("--servers must be at least 1")
    cfg = config_from_args(args)
    cfg.check()
    subjects = find_subjects(cfg.data_dir)
    train_s, _ = split_subjects(subjects, cfg.val_fraction, cfg.seed)
    if len(train_s) < args.workers:
        raise ValueError(f"{args.workers} workers but only {len(train_s)} training subject(s) in {cfg.data_dir}")
    out = Path(cfg.output)
    has_ckpt = _checkpoint_dir(out) is not None
    if cfg.resume and not has_ckpt:
        raise ValueError(f"{out}: no checkpoint to resume from")
    if not cfg.resume and has_ckpt:
        raise ValueError(f"{out} already holds a training checkpoint: pass --resume to continue it, "
                         "or choose another output folder")
    if cfg.export_png:
        export_png_pairs(subjects, cfg.export_png)
    for stale in (out / "workers").glob("rank*.json"):
        stale.unlink()
    print(f"starting {args.workers} worker(s) and {args.servers} server(s) on 127.0.0.1 ({kv})", file=sys.stderr)
    t0 = time.time()
    rc = launch_local(worker_argv(args), args.workers, args.servers, args.timeout)
    if rc != 0:
        return rc
    best = out / "best" / "model.json"
    if best.exists():
        meta = json.loads(best.read_text(encoding="utf-8"))
        print(f"trained with {args.workers} workers in {time.time() - t0:.0f} s; best epoch {meta.get('epoch')} "
              f"(mean tissue Dice {meta.get('mean_tissue_dice')}) in {best.parent}")
    return 0


def _run_worker(args) -> int:
    """A worker of a cluster: on any failure leave at once (os._exit), because Python's normal exit
    would finalise the kvstore, which waits at a barrier for workers that are still training."""
    try:
        cfg = config_from_args(args)
        res = train(cfg, progress=_print_progress)
        if res.rank == 0:
            print(f"rank 0: {res.epochs_done} epoch(s), {res.steps} steps, best epoch {res.best_epoch} "
                  f"-> {res.best_dir}", flush=True)
        return 0
    except BaseException as exc:  # noqa: BLE001 - any failure must end this process now
        if not isinstance(exc, (ValueError, OSError)):
            import traceback

            traceback.print_exc()
        print(f"worker failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2 if isinstance(exc, (ValueError, OSError)) else 1)


def run_train(args) -> int:
    """`brainseg train`: one process, a local cluster (--workers), or one worker of a cluster."""
    from engine.core.mx_env import configure_threads

    if args.workers and not args._worker:
        return _launch(args)
    configure_threads()
    if args._worker or (args.kvstore or "").startswith("dist"):
        from engine.train.dist import in_cluster

        if not in_cluster():
            raise ValueError(f"--kvstore {args.kvstore or 'dist_sync'} needs a parameter-server cluster "
                             "(DMLC_ROLE=worker and DMLC_PS_ROOT_URI are not set): add --workers N --servers M "
                             "to start one on this machine, or launch the workers with MXNet's tools/launch.py")
        return _run_worker(args)
    cfg = config_from_args(args)
    res = train(cfg, progress=_print_progress)
    d = ", ".join(f"{k} {v:.3f}" for k, v in res.best_dice.items() if v is not None and k != "background")
    print(f"trained {res.epochs_done} epoch(s) in {res.seconds:.0f} s; best epoch {res.best_epoch}"
          f"{f' (val Dice {d})' if d else ''} -> {res.best_dir}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.train.oasis", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    _train_args(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return run_train(args)
    except (ValueError, OSError) as exc:
        print(f"brainseg train: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
