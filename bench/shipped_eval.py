"""Dice of the shipped weights on data kept out of their training, and whole-volume times.

    .venv/bin/python -m bench.shipped_eval [--no-append]

No second real brain with labels installs offline, so the held-out data is the axial slab of the
template that tools/train_shipped.py never trained on (slices 92-107 of the demo grid), clean, with
a fixed realistic perturbation (bias field, gamma 1.3, blur, Rician-like noise), and rescaled to an
int16 scanner range (x37: normalisation must not care). The whole demo volume (mostly slices seen
in training) is reported for reference only.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--models", default="unet,enet")
    args = ap.parse_args(argv)
    from engine.mx_env import configure_threads

    configure_threads()
    from train_shipped import HOLD_OUT, perturb

    from engine.bench import cpu_info
    from engine.inference import BEST_BATCH, SegmentConfig, Segmenter
    from engine.metrics import dice_scores, mean_tissue_dice
    from engine.paths import DEMO_LABELS, DEMO_SCAN
    from engine.preprocess import normalise
    from engine.volume import read_volume
    from engine.weights import read_model_dir, shipped_model_dir

    scan = read_volume(DEMO_SCAN).data
    ref = read_volume(DEMO_LABELS).data
    hold = list(range(*HOLD_OUT))
    variants = {
        "held-out slab, clean": scan,
        "held-out slab, perturbed": perturb(normalise(scan)) * 255.0,
        "held-out slab, int16 scale x37": scan * 37.0,
    }
    f = lambda d: " / ".join(f"{d[k]:.3f}" for k in ("csf", "gm", "wm"))  # noqa: E731
    lines = [f"### Shipped weights - {time.strftime('%Y-%m-%d %H:%M')} - {cpu_info(measure_clock=False)['cpu']}, {os.cpu_count()} cores",
             "", "Per-class hard Dice CSF / GM / WM (mean). Held-out = axial slices "
             f"{HOLD_OUT[0]}-{HOLD_OUT[1] - 1}, never trained on.", "",
             "| model | data | CSF / GM / WM | mean |", "|---|---|---|---:|"]
    times = []
    for model in args.models.split(","):
        d = shipped_model_dir(model)
        if not (d / "model.json").exists():
            lines.append(f"| {model} | (no shipped weights) | | |")
            continue
        seg = Segmenter(d)
        for name, vol in variants.items():
            pred = seg.segment(vol, SegmentConfig(batch_size=16, slices=tuple(hold))).labels
            dc = dice_scores(ref[:, :, hold], pred[:, :, hold])
            lines.append(f"| {model} | {name} | {f(dc)} | {mean_tissue_dice(dc):.3f} |")
        first = seg.segment(scan, SegmentConfig()).seconds
        ts = []
        for _ in range(3):
            r = seg.segment(scan, SegmentConfig())
            ts.append(r.seconds)
        dc = dice_scores(ref, r.labels)
        lines.append(f"| {model} | whole demo volume (mostly seen in training) | {f(dc)} | {mean_tissue_dice(dc):.3f} |")
        meta = read_model_dir(d).meta.get("training", {})
        times.append(f"- {model}: whole volume {np.median(ts):.2f} s (median of 3 after a first volume of "
                     f"{first:.2f} s that also plans the graph's crop shapes; {r.slices_run} slices with brain, "
                     f"batch {BEST_BATCH[model]}); trained {meta.get('minutes')} min, {meta.get('steps')} steps "
                     f"(best at {meta.get('best_step')}), batch {meta.get('batch_size')}.")
    text = "\n".join(lines + [""] + times + [""])
    report(text, append=not args.no_append)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
