"""Train the shipped default weights from the MNI ICBM152 2009a template (nilearn), heavily augmented.

    python tools/train_shipped.py --model unet --minutes 50 [--resume]

Runs for a time budget with checkpoints (runs/<model>/ckpt.*) and a log (runs/<model>/train.log),
so it can be killed and resumed. An axial slab of the template (slices HOLD_OUT) is never trained
on: validation Dice is measured there, clean and with a fixed intensity perturbation, and the
best checkpoint by that score is written to resources/weights/<model>/ with its training record.
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

from engine.mx_env import configure_threads, get_mx  # noqa: E402

HOLD_OUT = (92, 108)  # axial slices [lo, hi) of the demo grid never trained on


def build_data():
    sys.path.insert(0, str(ROOT / "tools"))
    from make_demo import load_template, template_labels

    from engine.preprocess import normalisation_scale

    tpl = load_template()
    labels = template_labels(tpl)[::-1]  # same x flip as the demo scan
    t1 = np.where(tpl["mask"], tpl["t1"], 0.0)[::-1]
    gm, wm, mask = tpl["gm"][::-1], tpl["wm"][::-1], tpl["mask"][::-1]
    csf = np.clip(1 - gm - wm, 0, 1) * mask
    probs = np.stack([csf, gm * mask, wm * mask]).astype(np.float32)
    scale = normalisation_scale(t1)
    return (np.ascontiguousarray(t1 / scale, dtype=np.float32), np.ascontiguousarray(labels),
            np.ascontiguousarray(probs))


def perturb(volume: np.ndarray, seed: int = 7) -> np.ndarray:
    """A fixed, realistic intensity shift: bias field, gamma 1.3, blur and Rician-like noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    x = volume.copy()
    fg = x > 0
    zz = np.linspace(-1, 1, x.shape[2])[None, None, :]
    yy = np.linspace(-1, 1, x.shape[1])[None, :, None]
    xx = np.linspace(-1, 1, x.shape[0])[:, None, None]
    x = x * np.exp(0.2 * xx - 0.15 * yy + 0.1 * zz * yy)
    x = np.clip(x, 0, None) ** 1.3
    x = ndi.gaussian_filter(x, 0.6)
    x = np.sqrt((x + 0.03 * rng.standard_normal(x.shape)) ** 2 + (0.03 * rng.standard_normal(x.shape)) ** 2)
    return np.where(fg, x, 0).astype(np.float32)


def sampler(t1, labels, probs, batch_size, seed, train_z, aug_cfg):
    from engine.augment import augment_pair

    rng = np.random.default_rng(seed)
    while True:
        xs, ys = [], []
        for _ in range(batch_size):
            k = int(rng.choice(train_z))
            img, lab = augment_pair(t1[:, :, k], labels[:, :, k], rng, aug_cfg, probs=probs[:, :, :, k])
            xs.append(img)
            ys.append(lab)
        yield np.stack(xs)[:, None], np.stack(ys)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("unet", "enet"), required=True)
    ap.add_argument("--minutes", type=float, default=50)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", help="start from these parameters (e.g. a second, annealing run from best.params)")
    ap.add_argument("--val-every", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1984)
    args = ap.parse_args(argv)

    configure_threads()
    get_mx()
    from engine.augment import AugmentConfig
    from engine.inference import SegmentConfig, Segmenter
    from engine.metrics import dice_scores, mean_tissue_dice
    from engine.models import count_parameters, get_model
    from engine.training import FitConfig, fit, hybridize_for_training, init_network, make_trainer
    from engine.weights import ModelInfo, update_manifest, write_model_dir

    work = Path(args.workdir or ROOT / "runs" / args.model)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or ROOT / "resources" / "weights" / args.model)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(work / "train.log"), logging.StreamHandler()])
    log = logging.getLogger("train_shipped")

    t1, labels, probs = build_data()
    has_brain = np.where(labels.any(axis=(0, 1)))[0]
    train_z = np.array([k for k in has_brain if not HOLD_OUT[0] <= k < HOLD_OUT[1]])
    hold_z = tuple(range(*HOLD_OUT))
    perturbed = perturb(t1)
    bs = args.batch_size or (4 if args.model == "unet" else 8)
    aug = AugmentConfig(p_synthetic=0.25)

    net = get_model(args.model)
    init_network(net)
    if args.init:
        # allow_missing: parameters the architecture gained since (e.g. ENet's skips) keep their
        # initialisation, zero for the skips' output convolutions, so training starts from the same function
        net.load_parameters(args.init, allow_missing=True)
    hybridize_for_training(net)
    state = {"step": 0, "elapsed_s": 0.0, "best": -1.0, "history": []}
    if args.resume and (work / "ckpt.params").exists():
        net.load_parameters(str(work / "ckpt.params"))
        state = json.loads((work / "state.json").read_text())
        log.info("resumed at step %d (%.0f s trained)", state["step"], state["elapsed_s"])
    # Estimate the total steps from the budget after a short timing, for the cosine schedule.
    budget = args.minutes * 60.0
    cfg = FitConfig(steps=10**9, batch_size=bs, lr=args.lr, log_every=25, warmup_steps=50)
    trainer = make_trainer(net, cfg)
    if args.resume and (work / "ckpt.states").exists():
        trainer.load_states(str(work / "ckpt.states"))
    if state.get("total_steps"):
        cfg.steps = state["total_steps"]
    else:
        t = time.time()
        fit(net, sampler(t1, labels, probs, bs, args.seed, train_z, aug), FitConfig(
            steps=5, batch_size=bs, lr=1e-5, log_every=1000), trainer=trainer)
        per_step = (time.time() - t) / 5
        cfg.steps = int(budget / per_step * 0.92)
        state["total_steps"] = cfg.steps
        log.info("%s: %d parameters, %.2f s/step at batch %d -> %d steps in %.0f min", args.model,
                 count_parameters(net), per_step, bs, cfg.steps, args.minutes)

    info = ModelInfo(work, args.model, {}, {"version": "training"})
    seg = Segmenter.from_network(net, info)

    def validate():
        res = {}
        for name, vol in (("clean", t1), ("perturbed", perturbed)):
            pred = seg.segment(vol, SegmentConfig(batch_size=8, slices=hold_z)).labels
            sl = list(hold_z)
            d = dice_scores(labels[:, :, sl], pred[:, :, sl])
            res[name] = {k: round(v, 4) for k, v in d.items() if v is not None}
        res["score"] = round(np.mean([mean_tissue_dice(res["clean"]), mean_tissue_dice(res["perturbed"])]), 4)
        return res

    t_start = time.time() - state["elapsed_s"]
    seed = args.seed + state["step"]

    def on_progress(p):
        log.info("step %d/%d loss %.4f lr %.2e elapsed %.0f s", p.step, p.steps, p.loss, p.lr,
                 time.time() - t_start)

    def on_checkpoint(step):
        state["step"] = step
        state["elapsed_s"] = time.time() - t_start
        val = validate()
        state["history"].append({"step": step, **val})
        log.info("validation at step %d: %s", step, json.dumps(val))
        net.save_parameters(str(work / "ckpt.params"))
        trainer.save_states(str(work / "ckpt.states"))
        if val["score"] > state["best"]:
            state["best"] = val["score"]
            net.save_parameters(str(work / "best.params"))
            state["best_val"] = val
            state["best_step"] = step
        (work / "state.json").write_text(json.dumps(state, indent=1))

    remaining = budget - state["elapsed_s"]
    cfg.max_seconds = max(0.0, remaining)
    last = fit(net, sampler(t1, labels, probs, bs, seed, train_z, aug), cfg, trainer=trainer,
               start_step=state["step"], on_progress=on_progress, on_checkpoint=on_checkpoint,
               checkpoint_every=args.val_every)
    on_checkpoint(last)
    net.load_parameters(str(work / "best.params"))
    record = {
        "source": "MNI ICBM152 2009a template from nilearn (tools/make_demo.py), augmented",
        "initialised_from": args.init,
        "script": "tools/train_shipped.py",
        "held_out_axial_slices": list(HOLD_OUT),
        "steps": last, "best_step": state["best_step"], "batch_size": bs,
        "minutes": round((time.time() - t_start) / 60, 1),
        "augmentation": aug.__dict__,
        "loss": "class-weighted softmax CE (seed weights) + soft Dice", "optimizer": "Adam lr 1e-3 cosine",
        "validation_on_held_out_slab": state["best_val"],
        "trained_at": time.strftime("%Y-%m-%d %H:%M"),
    }
    arch_kwargs = {"skips": True} if args.model == "enet" else {}
    info = write_model_dir(out, net, args.model, arch_kwargs, version=f"{args.model}-shipped-1", parent=None,
                           training=record)
    if out.resolve().parent == (ROOT / "resources" / "weights").resolve():
        update_manifest(args.model, info)
    log.info("wrote %s: %s", out, json.dumps(state["best_val"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
