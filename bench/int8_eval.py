"""INT8 against FP32 for the shipped models: speed-up and Dice change on the demo scan.

    .venv/bin/python -m bench.int8_eval [--no-append] [--no-record] [--smoke]

Records the result in each shipped model's model.json ("int8"); the app and `brainseg segment`
offer INT8 only where every class's Dice changed by at most 0.005 and it ran faster, and there it
is their default (engine.infer.inference.default_precision).

--smoke (tests/bench): ENet only, the demo cropped to 16 axial slices, one run per precision, the
result recorded into a copy of the model folder in a temporary folder (never resources/).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from bench.common import add_smoke_flag, demo_slab, report, start_smoke

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--models", default="unet,enet")
    ap.add_argument("--report-proxies", action="store_true",
                    help="also the Dice change on the REPORT proxies of bench/proxy_eval.py (clean, MPRAGE-like, rim "
                         "1 mm; never trained on), with the app's INT8 (the demo calibration, cached)")
    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    scratch = None
    if args.smoke:
        scratch = start_smoke("int8_eval")
        args.models = "enet"
        args.report_proxies = True  # its code path too, on the slab
    from engine.core.mx_env import configure_threads

    configure_threads()
    from engine.core.atomic import atomic_write
    from engine.core.metrics import dice_scores
    from engine.core.paths import DEMO_LABELS, DEMO_SCAN
    from engine.infer.inference import INT8_MAX_DICE_CHANGE, SegmentConfig, Segmenter
    from engine.io.volume import read_volume
    from engine.nets.weights import shipped_model_dir

    if args.smoke:
        scan, ref, _ = demo_slab()
    else:
        scan, ref = read_volume(DEMO_SCAN).data, read_volume(DEMO_LABELS).data
    lines = [f"### INT8 vs FP32 - {time.strftime('%Y-%m-%d %H:%M')} - {os.cpu_count()} cores", "",
             "Whole demo volume, batch 16, cropped to the brain; calibration: 16 slices of the demo scan "
             "(naive min/max). Offered in the app and CLI only if every class's Dice changes by <= 0.005 and INT8 is faster.", "",
             "| model | FP32 s | INT8 s | speed-up | Dice FP32 CSF/GM/WM | Dice INT8 CSF/GM/WM | max change | offered |",
             "|---|---:|---:|---:|---|---|---:|---|"]
    for model in args.models.split(","):
        d = shipped_model_dir(model)
        if not (d / "model.json").exists():
            continue
        if scratch is not None:  # record into a copy: a smoke run never touches resources/
            d = Path(shutil.copytree(d, scratch / "weights" / model))
        res = {}
        for prec in ("fp32", "int8"):
            seg = Segmenter(d, precision=prec)
            if not args.smoke:
                seg.segment(scan, SegmentConfig(batch_size=16))
            ts = []
            for _ in range(1 if args.smoke else 2):
                r = seg.segment(scan, SegmentConfig(batch_size=16))
                ts.append(r.seconds)
            res[prec] = (float(np.median(ts)), dice_scores(ref, r.labels))
        change = {k: res["int8"][1][k] - res["fp32"][1][k] for k in ("csf", "gm", "wm")}
        worst = max(abs(v) for v in change.values())
        speed = res["fp32"][0] / res["int8"][0]
        offered = worst <= INT8_MAX_DICE_CHANGE and speed > 1.0
        f = lambda dd: " / ".join(f"{dd[k]:.4f}" for k in ("csf", "gm", "wm"))  # noqa: E731
        lines.append(f"| {model} | {res['fp32'][0]:.2f} | {res['int8'][0]:.2f} | {speed:.2f}x | {f(res['fp32'][1])} | "
                     f"{f(res['int8'][1])} | {worst:.4f} | {'yes' if offered else 'no'} |")
        if not args.no_record:
            meta_path = d / "model.json"
            meta = json.loads(meta_path.read_text())
            meta["int8"] = {"dice_change": change, "speedup": speed, "offered": offered,
                            "measured": time.strftime("%Y-%m-%d %H:%M"), "fp32_s": res["fp32"][0],
                            "int8_s": res["int8"][0]}
            atomic_write(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2, default=str)))
    if args.report_proxies:
        lines += ["", *report_proxies(args, [m for m in args.models.split(",") if m])]
    text = "\n".join(lines) + "\n"
    report(text, append=not args.no_append)
    return 0


def report_proxies(args, models) -> list[str]:
    """INT8 against FP32 on the REPORT proxies (template anatomy under seeds never used to train or
    choose; proxies, not held-out brains), fused A+C+S as the app runs: per-class Dice and volume error."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from train_shipped import perturb, proxy_subject

    from bench.proxy_eval import LAS_AFFINE, REPORT_SEEDS, template_source
    from bench.val21_eval import scores
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.nets.weights import shipped_model_dir
    from engine.train.synth import margin_mask

    t1, labels, csf_mean = template_source(args.smoke)
    seeds = REPORT_SEEDS[:1] if args.smoke else REPORT_SEEDS
    out = ["INT8 against FP32 on the REPORT proxies (fused A+C+S, the app's INT8: demo calibration; mean over "
           f"seeds {list(seeds)}):", "", "| model | form | Dice CSF / GM / WM FP32 | INT8 | volume error CSF / GM / WM "
           "FP32 | INT8 |", "|---|---|---|---|---|---|"]
    for model in models:
        segs = {p: Segmenter(shipped_model_dir(model), precision=p) for p in ("fp32", "int8")}
        res: dict = {}
        for s in seeds:
            img0, lab = proxy_subject(t1, labels, csf_mean, s)
            rim = margin_mask(lab, 1.0)
            forms = {"clean": (img0, lab), "MPRAGE-like": (perturb(img0, seed=s), lab),
                     "rim 1 mm": (np.where(rim, img0, 0), np.where(rim, lab, 0).astype(np.uint8))}
            for form, (x, y) in forms.items():
                for p, seg in segs.items():
                    pred = seg.segment((x * 200).astype(np.float32), SegmentConfig(), affine=LAS_AFFINE).labels
                    res.setdefault(form, {}).setdefault(p, []).append(scores(y, pred))
        for form, by in res.items():
            m = {p: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for p, rs in by.items()}
            d = lambda r: " / ".join(f"{r[k]:.3f}" for k in ("csf", "gm", "wm"))  # noqa: E731
            v = lambda r: " / ".join(f"{100 * r[k + '_vol_err']:+.1f}" for k in ("csf", "gm", "wm")) + " %"  # noqa: E731
            out.append(f"| {model} | {form} | {d(m['fp32'])} | {d(m['int8'])} | {v(m['fp32'])} | {v(m['int8'])} |")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
