"""A candidate model against the shipped one on the REPORT proxies: Dice and volume error per tissue.

    python -m bench.candidate_eval --arch enet --candidate runs/enet5/out [--json OUT] [--no-append]
    python -m bench.candidate_eval --smoke

What the data is: the REPORT proxies of bench/proxy_eval.py (synthetic subjects of the ICBM152
template from seeds that neither training nor checkpoint selection used; the template's anatomy, so
proxies, not held-out brains), in three forms: clean (LAS 1 mm), MPRAGE-like, and each proxy's mask
cut back to its pial envelope + 1 mm (engine.train.synth.margin_mask, as the thin-rim copies of bench/val21_eval.py: a thin CSF rim, as in an
individual brain or a tightly stripped one). Both models fused over three planes, the app's default.
Volume error = (predicted - labelled) / labelled voxels per tissue.
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("enet", "unet"), default="enet")
    ap.add_argument("--candidate", help="the candidate's model folder")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--no-append", action="store_true")
    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        start_smoke("candidate_eval")
        args.candidate = args.candidate or str(ROOT / "resources" / "weights" / args.arch)  # both code paths
    from engine.core.mx_env import configure_threads

    configure_threads()
    from train_shipped import perturb, proxy_subject

    from bench.proxy_eval import LAS_AFFINE, REPORT_SEEDS, template_source
    from bench.val21_eval import scores
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.nets.weights import read_model_dir, shipped_model_dir
    from engine.train.synth import margin_mask

    shipped = shipped_model_dir(args.arch)
    models = {read_model_dir(shipped).version + " (shipped)": shipped}
    if args.candidate:
        models[read_model_dir(args.candidate).version + " (candidate)"] = Path(args.candidate)
    segs = {n: Segmenter(d) for n, d in models.items()}
    t1, labels, csf_mean = template_source(args.smoke)
    seeds = REPORT_SEEDS[:1] if args.smoke else REPORT_SEEDS
    results: dict = {}
    t0 = time.time()
    for s in seeds:
        img0, lab = proxy_subject(t1, labels, csf_mean, s)
        rim = margin_mask(lab, 1.0)
        forms = {"clean": ((img0 * 200).astype(np.float32), lab),
                 "MPRAGE-like": ((perturb(img0, seed=s) * 200).astype(np.float32), lab),
                 "rim 1 mm": ((np.where(rim, img0, 0) * 200).astype(np.float32), np.where(rim, lab, 0).astype(np.uint8))}
        for form, (x, y) in forms.items():
            for name, seg in segs.items():
                pred = seg.segment(x, SegmentConfig(), affine=LAS_AFFINE).labels
                results.setdefault(form, {}).setdefault(name, []).append(scores(y, pred))
            print(f"proxy {s} {form} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    keys = ("csf", "gm", "wm", "csf_vol_err", "gm_vol_err", "wm_vol_err", "mean")
    mean = {f: {n: {k: round(float(np.mean([r[k] for r in rs])), 4) for k in keys} for n, rs in ms.items()}
            for f, ms in results.items()}
    if args.json:
        Path(args.json).write_text(json.dumps({"per_proxy": results, "mean": mean}, indent=1))
    lines = [f"### Candidate against shipped on the REPORT proxies ({time.strftime('%Y-%m-%d %H:%M')}; "
             "bench/candidate_eval.py)", "",
             f"REPORT proxies {list(seeds)} (template anatomy, never used for training or selection: proxies, not "
             "held-out brains); fused A+C+S; mean over the proxies.", "",
             "| form | model | Dice CSF / GM / WM | volume error CSF / GM / WM |", "|---|---|---|---|"]
    for f, ms in mean.items():
        for n, r in ms.items():
            lines.append(f"| {f} | {n} | {r['csf']:.3f} / {r['gm']:.3f} / {r['wm']:.3f} | "
                         f"{100 * r['csf_vol_err']:+.1f} / {100 * r['gm_vol_err']:+.1f} / "
                         f"{100 * r['wm_vol_err']:+.1f} % |")
    report("\n".join(lines) + "\n", append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
