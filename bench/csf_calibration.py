"""CSF calibration of a tissue network (issue #21 item 4): how much CSF weight makes its volumes right?

    python -m bench.csf_calibration --arch enet [--heads] [--json OUT] [--no-append]
    python -m bench.csf_calibration --smoke

A network's fused class probabilities are multiplied by per-class weights before the argmax (a
prior shift, Saerens et al. 2002: p(c|x) * w_c / sum), stored in model.json as
`calibration.class_weights` and applied by engine.infer.inference.Segmenter. This script sweeps the
CSF weight w (grey and white matter and background keep 1) and reports, per data set, Dice and
volume error per tissue:

- CHOOSE: the checkpoint-selection proxies of tools/train_shipped.py (template anatomy under the
  seeds 900001 / 900002, the MPRAGE-like copy of the first, and the second's mask cut back to its
  pial envelope + 1 mm). w is chosen there as the weight at which the predicted CSF volume equals
  the labelled one, summed over the set. Proxies of the training template, never held-out brains;
  nothing else is chosen on them here.
- REPORT: the REPORT proxies of bench/proxy_eval.py (seeds 777001-3: clean, MPRAGE-like, rim 1 mm),
  never used to choose anything.
- with --heads: the two heads of bench/val21_eval.py (ROBEX's and pydeface's population-average
  brains labelled by our own tissue model; clean, MPRAGE-like, 0.8 mm, rim 1 and 2 mm).

The model's own calibration (if its model.json has one) is taken out first, so w is absolute.
Never Colin27.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import add_smoke_flag, report, start_smoke

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

WEIGHTS = tuple(float(np.round(np.exp(0.05 * k), 4)) for k in range(-18, 10))  # 0.41-1.57, 1.0 included


def sweep(probs: np.ndarray, inside: np.ndarray, truth: np.ndarray, back=None, weights=WEIGHTS) -> dict:
    """{w: (predicted voxels per class 1-3, labelled per class, intersections per class)} for every
    CSF weight in `weights`. probs (4, *grid) on the scan's grid; labels as the app makes them for a
    skull-stripped scan (tissue inside the mask); `back` brings a label map to truth's grid."""
    out = {}
    t = [truth == c for c in (1, 2, 3)]
    tissue = probs[1:4].copy()
    for w in weights:
        tissue[0] = probs[1] * w
        lab = (np.argmax(tissue, axis=0) + 1).astype(np.uint8)
        lab[~inside] = 0
        if back is not None:
            lab = back(lab)
        p = [lab == c for c in (1, 2, 3)]
        out[w] = ([int(x.sum()) for x in p], [int(x.sum()) for x in t], [int((a & b).sum()) for a, b in zip(p, t)])
    return out


def summarise(per_case: list[dict], w: float) -> dict:
    """Mean over the cases of Dice and volume error per tissue at weight w."""
    rows = []
    for case in per_case:
        pred, lab, inter = case[w]
        r = {}
        for i, k in enumerate(("csf", "gm", "wm")):
            r[k] = 2 * inter[i] / max(pred[i] + lab[i], 1)
            r[f"{k}_vol_err"] = (pred[i] - lab[i]) / max(lab[i], 1)
        rows.append(r)
    keys = rows[0].keys()
    m = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    m["mean"] = round((m["csf"] + m["gm"] + m["wm"]) / 3, 4)
    return m


def choose_weight(per_case: list[dict]) -> float:
    """The weight at which summed predicted CSF equals summed labelled CSF (log-linear between grid
    points); the ends of WEIGHTS if it never crosses."""
    ratio = [sum(c[w][0][0] for c in per_case) / max(sum(c[w][1][0] for c in per_case), 1) for w in WEIGHTS]
    for i in range(len(WEIGHTS) - 1):
        a, b = ratio[i] - 1, ratio[i + 1] - 1
        if a <= 0 <= b and b > a:
            f = -a / (b - a)
            return round(float(np.exp(np.log(WEIGHTS[i]) + f * (np.log(WEIGHTS[i + 1]) - np.log(WEIGHTS[i])))), 3)
    return WEIGHTS[0] if ratio[0] > 1 else WEIGHTS[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("enet", "unet"), default="enet")
    ap.add_argument("--model", help="model folder (default: the shipped one of --arch)")
    ap.add_argument("--heads", action="store_true", help="also the two heads of bench/val21_eval.py")
    ap.add_argument("--json", help="also write the sweep here")
    ap.add_argument("--no-append", action="store_true")
    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        start_smoke("csf_calibration")
    from engine.core.mx_env import configure_threads

    configure_threads()
    from train_shipped import VAL_SEEDS, perturb, proxy_subject

    from bench.proxy_eval import LAS_AFFINE, REPORT_SEEDS, template_source
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.nets.weights import shipped_model_dir
    from engine.train.synth import SubjectConfig, margin_mask, tighten_mask

    model = Path(args.model) if args.model else shipped_model_dir(args.arch)
    seg = Segmenter(model)
    seg.class_weights = seg.secondary_class_weights = None  # absolute weights: the model's own calibration taken out
    cfg = SegmentConfig(return_probabilities=True)
    t0 = time.time()

    weights = list(WEIGHTS)

    def run(img, lab, aff=LAS_AFFINE, back=None, keep=False):
        res = seg.segment(img, cfg, affine=aff)
        if keep:  # swept again once w is chosen
            return res.probabilities, img > 0, lab
        return sweep(res.probabilities, img > 0, lab, back, weights)

    t1, labels, csf_mean = template_source(args.smoke)
    kept = []
    seeds = VAL_SEEDS[:1] if args.smoke else VAL_SEEDS
    subj = {s: proxy_subject(t1, labels, csf_mean, s) for s in seeds}
    for s, (img, lab) in subj.items():
        kept.append(run((img * 200).astype(np.float32), lab, keep=True))
    img, lab = subj[seeds[0]]
    kept.append(run((perturb(img) * 200).astype(np.float32), lab, keep=True))
    img, lab = subj[seeds[-1]]
    m = tighten_mask(lab, np.random.default_rng(seeds[-1]), SubjectConfig(tight_margin_mm=(1.0, 1.0)))
    kept.append(run((np.where(m, img, 0) * 200).astype(np.float32), np.where(m, lab, 0).astype(np.uint8), keep=True))
    print(f"selection proxies done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    w_star = choose_weight([sweep(*k) for k in kept])
    weights = sorted(set(WEIGHTS) | {w_star})  # every set is reported at the chosen weight itself
    choose = [sweep(*k, weights=weights) for k in kept]
    del kept
    w_grid = w_star

    sets: dict[str, list[dict]] = {"CHOOSE (selection proxies)": choose}
    for s in (REPORT_SEEDS[:1] if args.smoke else REPORT_SEEDS):
        img0, lab = proxy_subject(t1, labels, csf_mean, s)
        rim = margin_mask(lab, 1.0)
        sets.setdefault("REPORT proxies, clean", []).append(run((img0 * 200).astype(np.float32), lab))
        sets.setdefault("REPORT proxies, MPRAGE-like", []).append(
            run((perturb(img0, seed=s) * 200).astype(np.float32), lab))
        sets.setdefault("REPORT proxies, rim 1 mm", []).append(
            run((np.where(rim, img0, 0) * 200).astype(np.float32), np.where(rim, lab, 0).astype(np.uint8)))
        print(f"REPORT proxy {s} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    if args.heads:
        from bench.val21_eval import copies, heads
        from engine.labels.tissue_model import tissue_em

        for i, (hname, brain) in enumerate(heads(args.smoke).items()):
            truth = tissue_em(brain, brain > 0, beta=0.35).labels
            for cname, (img, aff, back, ctruth) in copies(brain, truth, seed=100 + i).items():
                if cname == "sagittal":  # the same labels as clean (geometry holds): left out
                    continue
                sets[f"{hname} head, {cname}"] = [run(img, ctruth, aff, back)]
            print(f"head {hname} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)

    table = {name: {str(w): summarise(cases, w) for w in weights} for name, cases in sets.items()}
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(model), "w_chosen": w_star, "w_grid": w_grid,
                                               "sweep": table}, indent=1))
    best_dice_w = max(weights, key=lambda w: table["CHOOSE (selection proxies)"][str(w)]["mean"])
    lines = [f"### CSF calibration sweep, {seg.info.version} ({time.strftime('%Y-%m-%d %H:%M')}; "
             "bench/csf_calibration.py)", "",
             f"CSF weight chosen on the selection proxies (summed CSF volume = labelled): **w = {w_star}**; "
             f"the selection proxies' best mean Dice is at w = {best_dice_w}. "
             "Fused A+C+S, mean over the cases of each set.", "",
             "| set | Dice CSF / GM / WM, w = 1 | volume error CSF / GM / WM, w = 1 | "
             f"Dice, w = {w_grid} | volume error, w = {w_grid} |", "|---|---|---|---|---|"]
    for name in table:
        a, b = table[name]["1.0"], table[name][str(w_grid)]
        fmt_d = lambda r: f"{r['csf']:.3f} / {r['gm']:.3f} / {r['wm']:.3f}"  # noqa: E731
        fmt_v = lambda r: " / ".join(f"{100 * r[k + '_vol_err']:+.1f}" for k in ("csf", "gm", "wm")) + " %"  # noqa: E731
        lines.append(f"| {name} | {fmt_d(a)} | {fmt_v(a)} | {fmt_d(b)} | {fmt_v(b)} |")
    report("\n".join(lines) + "\n", append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
