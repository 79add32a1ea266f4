"""Fine-tuning on the slices the user corrected, and the versioned model store.

A fine-tune loads the active version (parameters are never changed in place), holds back part of
the corrected slices for validation, reports Dice per class and the confusion matrix on them
before and after, and writes a *new* version directory: parameters, those stats, the parent
version, which scan and slices it learned from, the settings and the time. Cancelling leaves no
version behind and the active model untouched.

Versions live in <data dir>/models/<arch>/<version>/; `ModelStore` lists them, remembers which
one is active per architecture, compares two and rolls back. Nothing is ever overwritten.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engine.core.cancel import Cancelled, CancelToken
from engine.core.metrics import confusion_matrix, dice_from_confusion, mean_tissue_dice
from engine.core.mx_env import get_mx
from engine.core.privacy import name_fingerprint
from engine.infer.preprocess import SlicePadding, foreground_mask, normalisation_scale, normalise
from engine.nets.weights import write_model_dir
from engine.train.loop import FitConfig, FitProgress, fit, hybridize_for_training

log = logging.getLogger(__name__)

FINETUNE_CROP_MARGIN = 16  # pixels around the brain: rotation by 8 degrees and scaling by 8% stay inside


@dataclass
class FinetuneConfig:
    epochs: int = 20  # 10 corrected slices: ~60 s for ENet on 2 cores (docs/BENCHMARKS.md)
    lr: float = 3e-4
    batch_size: int = 4
    augment: bool = True
    layers: str = "all"  # all | decoder
    val_fraction: float = 0.2
    steps_per_epoch: int | None = None  # default: enough to see each training slice ~2x (augmented)
    seed: int = 1984


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    val_dice: dict
    elapsed_s: float
    eta_s: float


@dataclass
class FinetuneResult:
    version_dir: Path
    before: dict  # {"dice": ..., "confusion_matrix": ...}
    after: dict
    train_slices: list[int]
    val_slices: list[int]
    seconds: float


PLANES = ("axial", "coronal", "sagittal")


def item_label(plane: str, k: int):
    """How a corrected slice is recorded: an axial slice by its index (as before), another plane's
    as 'coronal:105'."""
    return int(k) if plane == "axial" else f"{plane}:{int(k)}"


def split_items(items: list[tuple[str, int]], val_fraction: float, seed: int):
    """split_slices over (plane, slice) pairs: about val_fraction of them held back."""
    s = sorted(set(items), key=lambda it: (PLANES.index(it[0]), it[1]))
    if len(s) < 2:
        return s, []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(s))
    n_val = max(1, int(round(len(s) * val_fraction)))
    key = lambda it: (PLANES.index(it[0]), it[1])  # noqa: E731
    return sorted((s[i] for i in order[n_val:]), key=key), sorted((s[i] for i in order[:n_val]), key=key)


def split_slices(slices: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold back about val_fraction of the (axial) slices (at least one when there are two or more)."""
    train, val = split_items([("axial", int(k)) for k in slices], val_fraction, seed)
    return [k for _, k in train], [k for _, k in val]


def evaluate_slices(net, multiple: int, images: np.ndarray, labels: np.ndarray, batch: int = 8,
                    class_weights=None) -> dict:
    """Dice per class and confusion matrix of net on normalised slices (N,H,W) vs labels (N,H,W).
    class_weights: the model's calibration (model.json), applied to the softmax before the argmax
    as the app applies it, so that a calibrated parent is scored on the labels the user saw."""
    mx = get_mx()
    if len(images) == 0:
        return {"dice": {}, "confusion_matrix": None, "mean_tissue_dice": None}
    pad = SlicePadding.for_shape(images.shape[1:], multiple)
    preds = []
    for i in range(0, len(images), batch):
        x = mx.nd.array(pad.pad(images[i:i + batch])[:, None])
        with mx.autograd.predict_mode():
            out = net(x)
            if class_weights is not None:
                out = mx.nd.softmax(out, axis=1) * mx.nd.array(class_weights).reshape((1, -1, 1, 1))
            preds.append(pad.unpad(mx.nd.argmax(out, axis=1).asnumpy().astype(np.uint8)))
    pred = np.concatenate(preds)
    cm = confusion_matrix(labels, pred)
    dice = dice_from_confusion(cm)
    # each held-back slice's own mean tissue Dice: what the activation rule's confidence interval uses
    per_slice = [mean_tissue_dice(dice_from_confusion(confusion_matrix(labels[i], pred[i]))) for i in range(len(pred))]
    return {"dice": dice, "confusion_matrix": cm.tolist(), "mean_tissue_dice": mean_tissue_dice(dice),
            "per_slice": per_slice}


MIN_SLICES_TO_ACTIVATE = 5  # held-back slices needed before a fine-tune is activated without asking


def activation_verdict(before: dict, after: dict, n_boot: int = 2000, seed: int = 0) -> tuple[bool, str]:
    """Whether a fine-tune may be activated without asking (issue #20: one was activated on the
    evidence of one held-back slice): at least MIN_SLICES_TO_ACTIVATE held-back slices, and a gain in
    mean tissue Dice whose 95 % bootstrap confidence interval (over the slices, paired) lies above 0.
    Returns (True, why) or (False, why not) - the words for the question or the CLI's note."""
    b = before.get("per_slice") or []
    a = after.get("per_slice") or []
    pairs = [(x, y) for x, y in zip(b, a) if x is not None and y is not None]
    if len(pairs) < MIN_SLICES_TO_ACTIVATE:
        return False, (f"only {len(pairs)} held-back slice{'s' if len(pairs) != 1 else ''} to judge it by "
                       f"(at least {MIN_SLICES_TO_ACTIVATE} are needed to activate it without asking)")
    d = np.array([y - x for x, y in pairs])
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    if lo > 0:
        return True, f"mean tissue Dice {d.mean():+.3f} on {len(d)} held-back slices (95 % CI {lo:+.3f} to {hi:+.3f})"
    return False, (f"mean tissue Dice {d.mean():+.3f} on {len(d)} held-back slices, 95 % CI {lo:+.3f} to "
                   f"{hi:+.3f}: it may be worse than its parent")


def decoder_blocks(net) -> list:
    """The decoder half of each network (trained alone in "decoder only" mode)."""
    if type(net).__name__ == "UNet":
        return [net.up, net.merge, net.head]
    return [net.b40, net.stage4, net.b50, net.stage5, net.fullconv]


def freeze_encoder(net) -> None:
    keep = {id(p) for b in decoder_blocks(net) for p in b.collect_params().values()}
    for p in net.collect_params().values():
        if id(p) not in keep:
            p.grad_req = "null"


def finetune(scan: np.ndarray, labels: np.ndarray, slices: list[int], parent_dir: str | os.PathLike,
             out_dir: str | os.PathLike, config: FinetuneConfig | None = None,
             on_progress: Callable[[FitProgress], None] | None = None,
             on_epoch: Callable[[EpochReport], None] | None = None,
             cancel: CancelToken | None = None, scan_name: str = "", version: str | None = None,
             affine: np.ndarray | None = None, plane_slices: dict[str, list[int]] | None = None) -> FinetuneResult:
    """Fine-tune the model in parent_dir on anatomically axial `slices` of (scan, labels) - indices
    along the scan's own superior-inferior array axis - and on the coronal and sagittal slices in
    `plane_slices` ({"coronal": [...], "sagittal": [...]}, indices along the scan's own axis for
    that plane; the networks were trained on all three planes); write a new version to out_dir.
    `affine` says how the scan lies (None: LAS 1 mm, the OASIS layout): each corrected slice is
    brought in-plane to the networks' LAS 1 mm orientation exactly as Segmenter brings the scan
    (engine/io/conform.py), so corrections drawn on a sagittally stored or 0.8 mm scan teach the
    right thing. Slices of different planes are cropped around the brain and centred on one
    canvas. Raises Cancelled (nothing written) or ValueError for unusable input."""
    from engine.core.classes import NUM_CLASSES
    from engine.infer.inference import load_network
    from engine.infer.preprocess import foreground_box, foreground_threshold
    from engine.io.conform import Conform
    from engine.train.augment import AugmentConfig, augment_pair  # scipy: only when fine-tuning (CLI start-up)

    cfg = config or FinetuneConfig()
    mx = get_mx()
    t0 = time.time()
    if scan.shape != labels.shape:
        raise ValueError(f"scan {scan.shape} and labels {labels.shape} differ in shape")
    geo = Conform.for_grid(scan.shape, affine)
    wanted = {"axial": list(slices or [])}
    for plane, ks in (plane_slices or {}).items():
        if plane not in PLANES:
            raise ValueError(f"unknown plane {plane!r}")
        wanted[plane] = list(wanted.get(plane, [])) + list(ks)
    items = sorted({(p, int(k)) for p, ks in wanted.items() for k in ks
                    if 0 <= int(k) < scan.shape[geo.native_axis(p)]}, key=lambda it: (PLANES.index(it[0]), it[1]))
    if not items:
        raise ValueError("no corrected slices to learn from")
    train_items, val_items = split_items(items, cfg.val_fraction, cfg.seed)
    if not train_items:
        train_items, val_items = val_items, []
    train_s = [item_label(*it) for it in train_items]
    val_s = [item_label(*it) for it in val_items]
    net, parent = load_network(parent_dir, mx.cpu())
    hybridize_for_training(net)
    multiple = int(net.multiple)
    # whole-scan statistics, as Segmenter computes them (on the work grid)
    work_scan = geo.to_work(scan)
    thr = foreground_threshold(work_scan)
    scale = normalisation_scale(work_scan, foreground_mask(work_scan, thr)) if thr is not None else 1.0
    del work_scan
    # the corrected slices only, per plane, on the work grid's orientation of that plane: (A, B, N).
    # Train and validate on the in-plane box around the brain (and any label) of these slices,
    # with room for the augmentation's rotation and scaling: less work when the brain is small in
    # the slice (a wide field of view, slices near the top). On the demo scan, 10 axial slices
    # spread through the brain already span the whole 176x208 slice, so it saves nothing there.
    crops, boxes = {}, {}
    for plane in PLANES:
        ks = [k for p, k in items if p == plane]
        if not ks:
            continue
        stack = geo.plane_slices_to_work(scan, plane, ks)
        lab_stack = geo.plane_slices_to_work(labels, plane, ks, classes=NUM_CLASSES)
        keep = ((stack > thr) if thr is not None else np.zeros(stack.shape, bool)) | (lab_stack > 0)
        bx, by = foreground_box(keep, multiple, margin=FINETUNE_CROP_MARGIN)
        norm = normalise(stack, scale)[bx, by]
        crops[plane] = {k: (norm[:, :, i], lab_stack[bx, by, i]) for i, k in enumerate(ks)}
        boxes[plane] = [[bx.start, bx.stop], [by.start, by.stop]]
    # one canvas for every plane's crops (each centred, background around it)
    H = max(img.shape[0] for c in crops.values() for img, _ in c.values())
    W = max(img.shape[1] for c in crops.values() for img, _ in c.values())

    def canvas(its):
        imgs = np.zeros((len(its), H, W), np.float32)
        labs = np.zeros((len(its), H, W), np.uint8)
        for n, (p, k) in enumerate(its):
            img, lab = crops[p][k]
            oy, ox = (H - img.shape[0]) // 2, (W - img.shape[1]) // 2
            imgs[n, oy:oy + img.shape[0], ox:ox + img.shape[1]] = img
            labs[n, oy:oy + img.shape[0], ox:ox + img.shape[1]] = lab
        return imgs, labs

    pad = SlicePadding.for_shape((H, W), multiple)
    tr_img, tr_lab = canvas(train_items)
    va_img, va_lab = canvas(val_items)
    # the parent as the user saw it (its calibration applied); the new version carries none
    before = evaluate_slices(net, multiple, va_img, va_lab, class_weights=parent.class_weights)
    steps_per_epoch = cfg.steps_per_epoch or max(1, int(np.ceil(2 * len(train_s) / cfg.batch_size)))
    total = steps_per_epoch * cfg.epochs
    fit_cfg = FitConfig(steps=total, batch_size=cfg.batch_size, lr=cfg.lr, lr_min=cfg.lr * 0.05,
                        log_every=max(1, steps_per_epoch // 2))
    if cfg.layers == "decoder":
        freeze_encoder(net)
    aug = AugmentConfig(rotate_deg=8, scale=(0.92, 1.08), elastic_alpha_px=3, p_noise=0.3, p_bias=0.5,
                        gamma=(0.85, 1.2), p_blur=0.15, p_sharpen=0.05)
    rng = np.random.default_rng(cfg.seed)

    def batches():
        while True:
            idx = rng.integers(0, len(train_s), size=cfg.batch_size)
            xs, ys = [], []
            for i in idx:
                img, lab = tr_img[i], tr_lab[i]
                if cfg.augment:
                    img, lab = augment_pair(img, lab, rng, aug)
                xs.append(img)
                ys.append(lab)
            yield pad.pad(np.stack(xs))[:, None], _pad_labels(pad, np.stack(ys))

    history = []
    last_loss = [float("nan")]

    def progress(p: FitProgress):
        last_loss[0] = p.loss
        if on_progress:
            on_progress(p)

    def epoch_end(step: int):
        ev = evaluate_slices(net, multiple, va_img, va_lab) if val_s else {"dice": {}}
        elapsed = time.time() - t0
        rep = EpochReport(step // steps_per_epoch, cfg.epochs, last_loss[0], ev["dice"], elapsed,
                          elapsed / max(step, 1) * (total - step))
        history.append({"epoch": rep.epoch, "val_dice": ev["dice"], "elapsed_s": round(elapsed, 2)})
        if on_epoch:
            on_epoch(rep)

    fit(net, batches(), fit_cfg, on_progress=progress, cancel=cancel,
        on_checkpoint=epoch_end, checkpoint_every=steps_per_epoch)
    if cancel is not None and cancel.cancelled:
        raise Cancelled()
    after = evaluate_slices(net, multiple, va_img, va_lab)
    out = Path(out_dir)
    record = {
        "version": version or out.name,
        "parent": parent.version,
        "parent_dir": parent.directory.name,  # a name, never a path (engine/core/privacy.py)
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        # a scan's path often holds a patient identifier: keep a short hash of its name only
        "scan": scan_fingerprint(scan_name),
        "train_slices": train_s,  # axial slices by index, others as "coronal:105"
        "val_slices": val_s,
        "crop_box": boxes["axial"] if list(boxes) == ["axial"] else boxes,
        "geometry": geo.describe() or "LAS 1 mm, used as stored",
        "settings": asdict(cfg),
        "before": before,
        "after": after,
        "history": history,
        "seconds": round(time.time() - t0, 2),
    }
    write_model_dir(out, net, parent.arch, parent.arch_kwargs, **record)
    log.info("fine-tuned %s -> %s in %.1f s: val mean Dice %s -> %s", parent.version, out,
             time.time() - t0, before.get("mean_tissue_dice"), after.get("mean_tissue_dice"))
    return FinetuneResult(out, before, after, train_s, val_s, time.time() - t0)


def _pad_labels(pad: SlicePadding, labels: np.ndarray) -> np.ndarray:
    oy, ox = pad.offsets()
    out = np.zeros((labels.shape[0],) + pad.padded, dtype=np.uint8)
    out[:, oy:oy + pad.shape[0], ox:ox + pad.shape[1]] = labels
    return out


# A scan is recorded by a salted hash of its file name (not its folder): enough to tell whether two
# versions learned from the same scan on this installation, nothing to identify a patient by
# (issue #20: it was an unsalted 12-hex hash).
scan_fingerprint = name_fingerprint
