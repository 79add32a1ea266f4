"""Train the shipped default weights from the MNI ICBM152 2009a template (nilearn), randomised hard.

    python tools/train_shipped.py --model unet --minutes 40 [--init resources/weights/unet/model.params] [--resume]

Training data (all derived from the one template brain; see README "Shipped weights"):
- labels with FSL_SEG semantics: `tissue_model.tissue_em` (Gaussian mixture + MRF on the template's
  own intensities, inside the skull-stripped template's whole mask, CSF rim included);
- a pool of synthetic subjects (`engine.train.synth.make_subject`: affine + elastic deformation, atrophy
  that opens sulci, template or label-drawn intensities, thick slices), refreshed as training runs;
- 2-D slices of all three anatomical planes (axial, coronal, sagittal) with 2-D intensity and
  spatial augmentation (`engine.train.augment`), cropped to CROP pixels for speed.

Validation picks the best checkpoint on VALIDATION proxies: synthetic subjects from seeds that
never enter the training pool (template anatomy under an unseen deformation and contrast), plus an
MPRAGE-like perturbation. They share the template's anatomy, so they are proxies, not held-out
brains; the figures we report come from a second, separate set of proxies (bench/proxy_eval.py)
that was never used to choose a checkpoint.

Runs for a time budget with checkpoints (runs/<model>/ckpt.*) and a log (runs/<model>/train.log),
so it can be killed and resumed with --resume.
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

from engine.core.mx_env import configure_threads, get_mx  # noqa: E402

CROP = (144, 160)  # training crop (multiple of 16); inference runs on whole slices
PLANES = {"axial": 2, "coronal": 1, "sagittal": 0}  # anatomical plane -> fixed axis of the LAS grid
PLANE_P = (0.4, 0.3, 0.3)
SECONDARY_P = (0.0, 0.5, 0.5)  # --planes secondary: the secondary planes' network sees only these
VAL_SEEDS = (900_001, 900_002)  # validation proxies: seeds never used for training subjects
POOL = 10
LABEL_CACHE = ROOT / "runs" / "data" / "template_tissue.npz"


def template_tissue(cache: Path = LABEL_CACHE):
    """(normalised template T1 on the demo grid (LAS), FSL_SEG-like labels, csf mean). Cached."""
    sys.path.insert(0, str(ROOT / "tools"))
    from make_demo import load_template, tissue_labels

    from engine.infer.preprocess import normalisation_scale

    if cache.exists():
        z = np.load(cache)
        return z["t1"], z["labels"], float(z["csf_mean"])
    tpl = load_template()
    t1 = np.where(tpl["mask"], tpl["t1"], 0.0)[::-1]  # same x flip as the demo scan (LAS)
    t1 = np.ascontiguousarray(t1 / normalisation_scale(t1), dtype=np.float32)
    labels, fit = tissue_labels(t1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, t1=t1, labels=labels, csf_mean=fit.means[0])
    return t1, labels, float(fit.means[0])


def perturb(volume: np.ndarray, seed: int = 7) -> np.ndarray:
    """A fixed MPRAGE-like degradation: bias field, gamma 1.3, slice blur and Rician noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    x = volume.copy()
    fg = x > 0
    zz = np.linspace(-1, 1, x.shape[2])[None, None, :]
    yy = np.linspace(-1, 1, x.shape[1])[None, :, None]
    xx = np.linspace(-1, 1, x.shape[0])[:, None, None]
    x = x * np.exp(0.2 * xx - 0.15 * yy + 0.1 * zz * yy)
    x = np.clip(x, 0, None) ** 1.3
    x = ndi.gaussian_filter(x, (0.5, 0.5, 0.9))
    x = np.sqrt((x + 0.03 * rng.standard_normal(x.shape)) ** 2 + (0.03 * rng.standard_normal(x.shape)) ** 2)
    return np.where(fg, x, 0).astype(np.float32)


def proxy_subject(t1, labels, csf_mean, seed: int):
    """A proxy subject: template anatomy under a deformation and atrophy drawn from `seed`, with the
    template's own intensities (real-looking), never in the training pool."""
    from engine.train.synth import SubjectConfig, make_subject

    cfg = SubjectConfig(p_atrophy=1.0, p_synthetic=0.0, p_thick=0.0)
    return make_subject(t1, labels, np.random.default_rng(seed), cfg, csf_mean=csf_mean)


class SlicePool:
    """Synthetic subjects, one replaced every `refresh` batches; yields 2-D training batches."""

    def __init__(self, t1, labels, csf_mean, seed: int, size: int, refresh: int, batch_size: int, aug_cfg,
                 log, p_tight: float = 0.0, plane_p=PLANE_P):
        from engine.train.synth import SubjectConfig

        self.t1, self.labels, self.csf_mean = t1, labels, csf_mean
        self.rng = np.random.default_rng(seed)
        self.cfg = SubjectConfig(p_tight=p_tight)
        self.refresh, self.bs, self.aug = refresh, batch_size, aug_cfg
        self.log = log
        self.plane_p = plane_p
        self.subjects = [self._new() for _ in range(size)]
        self.count = 0

    def _new(self):
        from engine.train.synth import make_subject

        t = time.time()
        s = make_subject(self.t1, self.labels, np.random.default_rng(int(self.rng.integers(1 << 31))),
                         self.cfg, csf_mean=self.csf_mean)
        self.log.debug("subject in %.1f s", time.time() - t)
        return s

    def _crop(self, img, lab):
        h, w = img.shape
        ch, cw = CROP
        fg = np.argwhere(lab > 0)
        cy, cx = (fg.min(0) + fg.max(0)) / 2 if len(fg) else (h / 2, w / 2)
        cy += self.rng.uniform(-24, 24)
        cx += self.rng.uniform(-24, 24)
        out_i = np.zeros(CROP, np.float32)
        out_l = np.zeros(CROP, np.uint8)
        y0, x0 = int(round(cy - ch / 2)), int(round(cx - cw / 2))
        sy, sx = max(0, y0), max(0, x0)
        ey, ex = min(h, y0 + ch), min(w, x0 + cw)
        out_i[sy - y0:ey - y0, sx - x0:ex - x0] = img[sy:ey, sx:ex]
        out_l[sy - y0:ey - y0, sx - x0:ex - x0] = lab[sy:ey, sx:ex]
        return out_i, out_l

    def __iter__(self):
        import dataclasses

        from engine.train.augment import augment_pair

        while True:
            self.count += 1
            if self.refresh and self.count % self.refresh == 0:
                self.subjects[int(self.rng.integers(len(self.subjects)))] = self._new()
            plane = self.rng.choice(list(PLANES), p=self.plane_p)
            axis = PLANES[plane]
            cfg = self.aug if plane != "sagittal" else dataclasses.replace(self.aug, flip_lr=False)
            xs, ys = [], []
            for _ in range(self.bs):
                img3, lab3 = self.subjects[int(self.rng.integers(len(self.subjects)))]
                counts = (lab3 > 0).sum(axis=tuple(a for a in range(3) if a != axis))
                ks = np.where(counts > 400)[0]
                k = int(self.rng.choice(ks))
                img = np.take(img3, k, axis=axis)
                lab = np.take(lab3, k, axis=axis)
                img, lab = augment_pair(img, lab, self.rng, cfg)
                img, lab = self._crop(img, lab)
                xs.append(img)
                ys.append(lab)
            yield np.stack(xs)[:, None], np.stack(ys)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("unet", "enet"), required=True)
    ap.add_argument("--minutes", type=float, default=40)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", help="start from these parameters (e.g. the previous shipped weights)")
    ap.add_argument("--val-every", type=int, default=150)
    ap.add_argument("--seed", type=int, default=1984)
    ap.add_argument("--version", default=None, help="version name written to model.json")
    ap.add_argument("--p-tight", type=float, default=0.0,
                    help="share of training subjects whose mask is tightened towards the pial surface "
                         "(engine.train.synth.tighten_mask); validation then adds a tight copy of a proxy")
    ap.add_argument("--width", type=int, default=None, help="ENet's stage-1 channels (default 64)")
    ap.add_argument("--repeats", type=int, default=None, help="ENet's stage 2-3 repeats (default 2)")
    ap.add_argument("--planes", choices=("all", "secondary"), default="all",
                    help="secondary: coronal and sagittal slices only (a secondary planes' network)")
    ap.add_argument("--teacher", default=None, help="a model folder whose logits are distilled into the network")
    ap.add_argument("--distill-weight", type=float, default=1.0)
    ap.add_argument("--distill-temperature", type=float, default=2.0)
    args = ap.parse_args(argv)
    if args.model != "enet" and (args.width or args.repeats):
        ap.error("--width and --repeats are ENet's")
    if args.planes == "secondary" and not (args.out and args.version):
        ap.error("--planes secondary trains a secondary planes' network: give --out (e.g. a model folder's "
                 "secondary/) and --version, so it never overwrites the shipped model")

    configure_threads()
    mx = get_mx()
    from engine.core.metrics import dice_scores, mean_tissue_dice
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.nets import count_parameters, get_model
    from engine.nets.weights import ModelInfo, update_manifest, write_model_dir
    from engine.train.augment import AugmentConfig
    from engine.train.loop import FitConfig, fit, hybridize_for_training, init_network, make_trainer

    work = Path(args.workdir or ROOT / "runs" / (args.model + ("-secondary" if args.planes == "secondary" else "")))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or ROOT / "resources" / "weights" / args.model)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(work / "train.log"), logging.StreamHandler()])
    log = logging.getLogger("train_shipped")

    t1, labels, csf_mean = template_tissue()
    val = []
    for s in VAL_SEEDS:
        img, lab = proxy_subject(t1, labels, csf_mean, s)
        val.append((f"proxy{s}", img, lab))
    val.append((f"proxy{VAL_SEEDS[0]}-mprage", perturb(val[0][1]), val[0][2]))
    if args.p_tight > 0:
        from engine.train.synth import SubjectConfig, tighten_mask

        img, lab = val[1][1], val[1][2]
        m = tighten_mask(lab, np.random.default_rng(VAL_SEEDS[1]), SubjectConfig(tight_margin_mm=(1.0, 1.0)))
        val.append((f"proxy{VAL_SEEDS[1]}-tight", np.where(m, img, 0).astype(np.float32),
                    np.where(m, lab, 0).astype(np.uint8)))
    bs = args.batch_size or (4 if args.model == "unet" else 8)
    aug = AugmentConfig(p_synthetic=0.0, rotate_deg=8.0, scale=(0.93, 1.07), elastic_alpha_px=3.0)

    arch_kwargs = {"skips": True} if args.model == "enet" else {}
    if args.model == "enet":
        arch_kwargs.update({k: v for k, v in (("width", args.width), ("repeats", args.repeats)) if v is not None})
    plane_p = SECONDARY_P if args.planes == "secondary" else PLANE_P
    val_planes = ("coronal", "sagittal") if args.planes == "secondary" else ("axial", "coronal")
    net = get_model(args.model, **arch_kwargs)
    init_network(net)
    if args.init:
        net.load_parameters(args.init, allow_missing=True)
    hybridize_for_training(net)
    state = {"step": 0, "elapsed_s": 0.0, "best": -1.0, "history": []}
    teacher_sha = None
    if args.teacher:
        from engine.nets.weights import read_model_dir

        teacher_sha = read_model_dir(args.teacher).meta.get("sha256")
    run = {"arch_kwargs": arch_kwargs, "planes": args.planes, "teacher_sha256": teacher_sha,
           "distill": [args.distill_weight, args.distill_temperature] if args.teacher else None}
    state["run"] = run
    if args.resume and (work / "ckpt.params").exists():
        saved = json.loads((work / "state.json").read_text())
        if saved.get("run", run) != run:  # (state files from before this check have no "run")
            raise SystemExit(f"{work / 'state.json'}: that run trained {saved['run']}, not {run}: resume it "
                             "with the same --width/--repeats/--planes/--teacher/--distill-*, or use another --workdir")
        net.load_parameters(str(work / "ckpt.params"))
        state = saved
        state["run"] = run
        log.info("resumed at step %d (%.0f s trained)", state["step"], state["elapsed_s"])
    budget = args.minutes * 60.0
    cfg = FitConfig(steps=10**9, batch_size=bs, lr=args.lr, log_every=25, warmup_steps=50,
                    distill_weight=args.distill_weight if args.teacher else 0.0,
                    distill_temperature=args.distill_temperature)
    teacher = None
    if args.teacher:
        from engine.infer.inference import fused_network, load_network

        fused = fused_network(args.teacher, mx.cpu())
        teacher = (fused or load_network(args.teacher, mx.cpu()))[0]
        log.info("distilling %s (weight %.2f, T %.1f)", args.teacher, cfg.distill_weight, cfg.distill_temperature)
    trainer = make_trainer(net, cfg)
    if args.resume and (work / "ckpt.states").exists():
        trainer.load_states(str(work / "ckpt.states"))
    pool = SlicePool(t1, labels, csf_mean, args.seed + state["step"], POOL, 40, bs, aug, log, p_tight=args.p_tight,
                     plane_p=plane_p)
    if state.get("total_steps"):
        cfg.steps = state["total_steps"]
    else:
        t = time.time()
        fit(net, iter(pool), FitConfig(steps=6, batch_size=bs, lr=1e-6, log_every=1000,
                                       distill_weight=cfg.distill_weight,
                                       distill_temperature=cfg.distill_temperature), trainer=trainer, teacher=teacher)
        per_step = (time.time() - t) / 6
        cfg.steps = int(budget / per_step * 0.85)
        state["total_steps"] = cfg.steps
        log.info("%s: %d parameters, %.2f s/step at batch %d -> %d steps in %.0f min", args.model,
                 count_parameters(net), per_step, bs, cfg.steps, args.minutes)

    info = ModelInfo(work, args.model, arch_kwargs, {"version": "training"})
    seg = Segmenter.from_network(net, info)

    def validate():
        res = {}
        for name, vol, lab in val:
            for plane in val_planes:
                axis = PLANES[plane]
                n = vol.shape[axis]
                ks = tuple(range(n // 2 - 30, n // 2 + 30, 3))
                pred = seg.segment(vol, SegmentConfig(batch_size=8, slices=ks, planes=(plane,),
                                                      slice_plane=plane)).labels
                sel = [slice(None)] * 3
                sel[axis] = list(ks)
                d = dice_scores(lab[tuple(sel)], pred[tuple(sel)])
                res[f"{name}/{plane}"] = {k: round(v, 4) for k, v in d.items() if v is not None and k != "background"}
        res["score"] = round(float(np.mean([mean_tissue_dice(v) for k, v in res.items()])), 4)
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
            state["best"] = v["score"]
            net.save_parameters(str(work / "best.params"))
            state["best_val"] = v
            state["best_step"] = step
        (work / "state.json").write_text(json.dumps(state, indent=1))

    if state["step"] == 0:
        v0 = validate()
        state["initial_val"] = v0
        log.info("validation before training: %s", json.dumps(v0))
    remaining = budget - state["elapsed_s"]
    cfg.max_seconds = max(0.0, remaining)
    cfg.schedule_seconds = budget * 0.97
    last = fit(net, iter(pool), cfg, trainer=trainer, start_step=state["step"], on_progress=on_progress,
               on_checkpoint=on_checkpoint, checkpoint_every=args.val_every, elapsed_offset=state["elapsed_s"],
               teacher=teacher)
    on_checkpoint(last)
    net.load_parameters(str(work / "best.params"))
    record = {
        "source": "MNI ICBM152 2009a template from nilearn: one brain, a population average",
        "labels": "FSL_SEG semantics: tissue_model.tissue_em (GMM + MRF on the template's own intensities, "
                  "whole skull-stripped mask incl. the CSF rim)",
        "data": "engine/train/synth.py synthetic subjects (affine + elastic deformation, atrophy opening sulci, "
                "template or label-drawn intensities, thick slices) -> 2-D slices of "
                f"{'the coronal and sagittal planes' if args.planes == 'secondary' else 'all three planes'}, crops {CROP[0]}x{CROP[1]}, engine/train/augment.py intensity/spatial augmentation",
        "planes": dict(zip(PLANES, plane_p)),
        "distilled_from": {"teacher": args.teacher, "teacher_sha256": teacher_sha, "weight": cfg.distill_weight,
                           "temperature": cfg.distill_temperature,
                           "what": "loss + weight * T^2 * KL(teacher || network) at temperature T "
                                   "(engine.train.loop.distill_loss), the teacher's logits on each batch"}
        if teacher is not None else None,
        "initialised_from": args.init,
        "script": "tools/train_shipped.py",
        "steps": last, "best_step": state.get("best_step"), "batch_size": bs,
        "minutes": round((time.time() - t_start) / 60, 1),
        "augmentation": aug.__dict__,
        "mask_tightening": {"p_tight": args.p_tight, "margin_mm": list(pool.cfg.tight_margin_mm),
                            "what": "engine.train.synth.tighten_mask: the pial envelope grown by a smoothly "
                                    "varying margin, labels and image cleared outside (other tools' "
                                    "skull-stripping masks; issue #21: U-Net called surface grey matter CSF)"}
        if args.p_tight > 0 else None,
        "loss": "class-weighted softmax CE (seed weights) + soft Dice", "optimizer": f"Adam lr {args.lr} cosine",
        "checkpoint_selection": "mean tissue Dice on validation proxies (synthetic subjects of the template "
                                f"from seeds {list(VAL_SEEDS)}, never trained on; NOT held-out brains)",
        "validation_proxies": state.get("best_val"),
        "trained_at": time.strftime("%Y-%m-%d %H:%M"),
    }
    version = args.version or f"{args.model}-shipped-4"
    info = write_model_dir(out, net, args.model, arch_kwargs, version=version, parent=None, training=record)
    if out.resolve().parent == (ROOT / "resources" / "weights").resolve():
        update_manifest(args.model, info)
    log.info("wrote %s: %s", out, json.dumps(state.get("best_val")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
