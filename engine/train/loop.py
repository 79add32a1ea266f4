"""Training core shared by the shipped-weights script, `brainseg train` and fine-tuning.

Loss: class-weighted softmax cross-entropy (the seed's weights by default) plus soft Dice over the
tissue classes. Optimiser: Adam (lr 1e-3, beta1 0.9, beta2 0.99). Initialisation: Xavier,
magnitude 6. Progress goes through a callback; a cancel token is checked every batch.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from engine.core.cancel import Cancelled, CancelToken
from engine.core.mx_env import get_mx

log = logging.getLogger(__name__)

SEED_CLASS_WEIGHTS = (1.35, 17.18, 8.29, 12.42)


@dataclass
class FitConfig:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    lr_min: float = 1e-5
    warmup_steps: int = 0
    class_weights: tuple[float, ...] = SEED_CLASS_WEIGHTS
    dice_weight: float = 1.0
    max_seconds: float | None = None
    log_every: int = 20
    # anneal by wall-clock time as well: the cosine reaches lr_min at schedule_seconds even when
    # steps run slower than estimated (a time-budgeted run on a shared machine)
    schedule_seconds: float | None = None
    # knowledge distillation (Hinton et al. 2015), used when fit() is given a teacher: this weight
    # times T^2 times KL(teacher || student) on both softmaxes at temperature T, added to seg_loss
    distill_weight: float = 0.0
    distill_temperature: float = 2.0


@dataclass
class FitProgress:
    step: int
    steps: int
    loss: float
    elapsed_s: float
    lr: float
    extra: dict = field(default_factory=dict)

    @property
    def eta_s(self) -> float:
        return self.elapsed_s / max(self.step, 1) * (self.steps - self.step)


def hybridize_for_training(net):
    """Hybridize a network (initialised or loaded) for training. ENet first swaps its PReLUs for
    TrainablePReLU: the same function and parameter file, 2.7x faster training steps, and the
    right slope gradients. MXNet 1.9.1's hybridized PReLU backward gives some layers' slopes half
    their gradient (checked against float64 finite differences; tests/engine/test_models.py)."""
    swap = getattr(net, "use_fast_prelu", None)
    if swap is not None:
        swap()
    net.hybridize(static_alloc=True)
    return net


def init_network(net, ctx=None):
    mx = get_mx()
    net.initialize(mx.init.Xavier(magnitude=6), ctx=ctx or mx.cpu(), force_reinit=False)
    return net


def seg_loss(F, logits, labels, class_weights, dice_weight: float):
    """Weighted softmax CE (mean over pixels) + dice_weight * (1 - mean soft Dice of classes 1..)."""
    logp = F.log_softmax(logits, axis=1)
    classes = len(class_weights)
    onehot = F.one_hot(labels, classes).transpose((0, 3, 1, 2))
    w = F.array(np.array(class_weights, dtype=np.float32), ctx=logits.context).reshape((1, classes, 1, 1))
    ce = -F.sum(F.broadcast_mul(onehot * logp, w), axis=1)
    ce = F.sum(ce) / F.sum(F.broadcast_mul(onehot, w))
    if dice_weight <= 0:
        return ce
    prob = F.exp(logp)
    inter = F.sum(prob * onehot, axis=(0, 2, 3))
    denom = F.sum(prob, axis=(0, 2, 3)) + F.sum(onehot, axis=(0, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + dice_weight * (1.0 - F.mean(dice[1:]))


def distill_loss(F, logits, teacher_logits, temperature: float):
    """T^2 * mean over pixels of KL(softmax(teacher/T) || softmax(student/T)) (Hinton et al. 2015:
    the T^2 keeps its gradients' scale independent of T). Teacher logits carry no gradient."""
    t = F.softmax(F.BlockGrad(teacher_logits) / temperature, axis=1)
    kl = F.sum(t * (F.log(t + 1e-8) - F.log_softmax(logits / temperature, axis=1)), axis=1)
    return (temperature ** 2) * F.mean(kl)


def cosine_lr(step: int, cfg: FitConfig, elapsed_s: float = 0.0) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, step / max(cfg.steps, 1))
    if cfg.schedule_seconds:
        t = min(1.0, max(t, elapsed_s / cfg.schedule_seconds))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * t))


def make_trainer(net, cfg, kvstore="device", optimizer: str = "adam", update_on_kvstore: bool | None = None):
    """The one optimiser set-up of every training path: Adam (beta1 0.9, beta2 0.99) or SGD
    (momentum 0.9) at cfg.lr; distributed training passes its kvstore and update_on_kvstore=False
    (updates on the workers, engine.train.dist)."""
    mx = get_mx()
    # Frozen parameters (grad_req "null", e.g. the encoder in decoder-only fine-tuning) are left out.
    # A list in network order, not a dict: Trainer sorts a dict by parameter name, and Gluon names
    # carry process-wide counters (conv0_ vs conv13_ for the second network built), so the index ->
    # parameter map saved with the optimizer state would not match a resumed network.
    params = [p for p in net.collect_params().values() if p.grad_req != "null"]
    if optimizer == "adam":
        opts = {"learning_rate": cfg.lr, "beta1": 0.9, "beta2": 0.99}
    elif optimizer == "sgd":
        opts = {"learning_rate": cfg.lr, "momentum": 0.9}
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose adam or sgd")
    kw = {} if update_on_kvstore is None else {"update_on_kvstore": update_on_kvstore}
    return mx.gluon.Trainer(params, optimizer, opts, kvstore=kvstore, **kw)


def fit(net, batches: Iterator[tuple[np.ndarray, np.ndarray]], cfg: FitConfig, ctx=None,
        on_progress: Callable[[FitProgress], None] | None = None, cancel: CancelToken | None = None,
        trainer=None, start_step: int = 0, on_checkpoint: Callable[[int], None] | None = None,
        checkpoint_every: int = 0, grad_scale: float = 1.0, elapsed_offset: float = 0.0,
        on_step: Callable[[int], None] | None = None, teacher=None) -> int:
    """Train on batches of (images (N,1,H,W) float32, labels (N,H,W) uint8). Returns the last step.

    `teacher` (a network of the same input and classes, e.g. the shipped ENet): its logits on each
    batch are distilled into `net` with cfg.distill_weight and cfg.distill_temperature.

    `on_step(step)` runs after every optimiser step (e.g. a weight average), before `on_checkpoint`.

    Stops at cfg.steps, at cfg.max_seconds, or raises Cancelled when cancel is set (checked each
    batch; the network then holds the last completed step's weights)."""
    mx = get_mx()
    ctx = ctx or mx.cpu()
    trainer = trainer or make_trainer(net, cfg)
    t0 = time.time()
    step = start_step
    running = None
    pending = None
    for images, labels in batches:
        if cancel is not None and cancel.cancelled:
            raise Cancelled()
        if step >= cfg.steps or (cfg.max_seconds and time.time() - t0 > cfg.max_seconds):
            break
        lr = cosine_lr(step, cfg, elapsed_offset + time.time() - t0)
        trainer.set_learning_rate(lr)
        x = mx.nd.array(images, ctx=ctx)
        y = mx.nd.array(labels, ctx=ctx, dtype="int32")
        soft = teacher(x) if teacher is not None and cfg.distill_weight > 0 else None  # (not recorded: inference)
        with mx.autograd.record():
            logits = net(x)
            loss = seg_loss(mx.nd, logits, y, cfg.class_weights, cfg.dice_weight)
            if soft is not None and cfg.distill_weight > 0:
                loss = loss + cfg.distill_weight * distill_loss(mx.nd, logits, soft, cfg.distill_temperature)
        loss.backward()
        trainer.step(grad_scale)
        step += 1
        if on_step is not None:
            on_step(step)
        if pending is not None:  # read the previous loss: keeps MXNet's queue one step ahead
            val = float(pending.asscalar())
            running = val if running is None else 0.95 * running + 0.05 * val
        pending = loss
        if on_progress and (step % cfg.log_every == 0 or step == cfg.steps):
            on_progress(FitProgress(step, cfg.steps, running if running is not None else float("nan"),
                                    time.time() - t0, lr))
        if on_checkpoint and checkpoint_every and step % checkpoint_every == 0:
            on_checkpoint(step)
    mx.nd.waitall()
    return step


class WeightAverage:
    """An exponential moving average of every parameter of `net`, BatchNorm running statistics
    included (Polyak averaging; timm's ModelEmaV2 does the same). Keyed like save_parameters, so
    `save()` writes a file that load_parameters reads. The decay ramps up as (1 + n) / (10 + n) over
    the first updates, so a fresh average does not hold on to the starting weights for long."""

    def __init__(self, net, decay: float):
        self.params = net._collect_params_with_prefix()
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.data().copy() for k, p in self.params.items()}

    def update(self, _step=None):
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for k, p in self.params.items():
            s = self.shadow[k]
            s *= d
            s += (1.0 - d) * p.data()

    def swap(self):
        """Exchange the live weights and the average (call twice to undo)."""
        for k, p in self.params.items():
            live = p.data().copy()
            p.set_data(self.shadow[k])
            self.shadow[k] = live

    def save(self, path):
        get_mx().nd.save(str(path), self.shadow)

    def load(self, path):
        saved = get_mx().nd.load(str(path))
        for k in self.shadow:
            self.shadow[k] = saved[k].as_in_context(self.params[k].data().context).copy()
