"""A secondary planes' network for ENet (issue #21, item 5): what it costs in Dice and volume, what it saves.

    python -m bench.secondary_eval [--candidate DIR] [--heads] [--repeats 3] [--json OUT] [--no-append]
    python -m bench.secondary_eval --smoke

The fused pass runs the axial plane with the model's network and every 3rd coronal and sagittal
slice with either the same network ("own") or a smaller one distilled from it ("secondary": a
model folder's `secondary/`, engine.infer.inference.SECONDARY_DIR). `--candidate DIR` tries a
trained network (tools/train_shipped.py --planes secondary --teacher ...) as the shipped ENet's
secondary before it is installed; without it, the shipped ENet's own `secondary/` is compared
with the same model without it.

Data (never Colin27; none of it chose the candidate, whose checkpoint tools/train_shipped.py
selected on its own validation proxies, seeds 900001-2):
- the REPORT proxies of bench/proxy_eval.py (ICBM152 template anatomy under unseen deformations,
  seeds 777001-3), clean and MPRAGE-like;
- with --heads: ROBEX's and pydeface's population-average brains labelled by our tissue model
  (bench/val21_eval.py), clean and MPRAGE-like.

Per variant: Dice and volume error per tissue against each set's labels, the share of brain
voxels whose label differs between the two variants, and the in-process seconds of the whole
segmentation (median of alternating repeats, the same Segmenter objects; the end-to-end speed
against Atropos is bench/proxy_eval.py's).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import add_smoke_flag, report, start_smoke

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))


def model_pair(primary: Path, candidate: Path | None, out: Path) -> tuple[Path, Path]:
    """(model folder with the secondary network, the same model without it), built in `out`."""
    from engine.infer.inference import SECONDARY_DIR

    with_, own = out / "with_secondary", out / "own"
    for d in (with_, own):
        d.mkdir(parents=True)
        for name in ("model.json", "model.params"):
            shutil.copyfile(primary / name, d / name)
    second = candidate or primary / SECONDARY_DIR
    if not (second / "model.json").exists():
        raise SystemExit(f"{second}: no secondary planes' network to evaluate (give --candidate DIR)")
    shutil.copytree(second, with_ / SECONDARY_DIR)
    return with_, own


def smoke_candidate(out: Path) -> Path:
    """A random small ENet as a stand-in candidate (smoke runs: figures meaningless)."""
    from engine.core.mx_env import get_mx
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir

    mx = get_mx()
    net = get_model("enet", width=32, repeats=1)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 1, 32, 32)))
    write_model_dir(out, net, "enet", {"skips": True, "width": 32, "repeats": 1}, version="smoke-secondary")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", help="a secondary planes' model folder to try (default: the shipped one)")
    ap.add_argument("--heads", action="store_true", help="also ROBEX's and pydeface's brains (bench/val21_eval.py)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating timed runs per data set")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--json", help="also write the raw figures here")
    add_smoke_flag(ap)
    args = ap.parse_args(argv)
    scratch = start_smoke("secondary_eval") if args.smoke else Path(tempfile.mkdtemp(prefix="secondary_eval_"))
    from engine.core.mx_env import configure_threads

    configure_threads()
    from bench.proxy_eval import LAS_AFFINE, REPORT_SEEDS, template_source
    from bench.val21_eval import scores
    from engine.infer.inference import SegmentConfig, Segmenter
    from engine.nets.weights import read_model_dir, shipped_model_dir

    primary = shipped_model_dir("enet")
    candidate = Path(args.candidate) if args.candidate else None
    if args.smoke:
        candidate = smoke_candidate(scratch / "candidate")
    with_dir, own_dir = model_pair(primary, candidate, scratch)
    seg = {"secondary": Segmenter(with_dir), "own": Segmenter(own_dir)}
    second_version = read_model_dir(with_dir / "secondary").version

    data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # name -> (scan, affine, labels)
    if args.smoke:
        from bench.common import demo_slab

        scan, lab, aff = demo_slab()
        data["demo slab (smoke)"] = (scan.astype(np.float32), aff, lab)
    else:
        from train_shipped import perturb, proxy_subject

        t1, labels, csf_mean = template_source(False)
        for s in REPORT_SEEDS:
            img, lab = proxy_subject(t1, labels, csf_mean, s)
            data[f"REPORT {s} clean"] = ((img * 200.0).astype(np.float32), LAS_AFFINE, lab)
            data[f"REPORT {s} MPRAGE-like"] = ((perturb(img, seed=s) * 200.0).astype(np.float32), LAS_AFFINE, lab)
        if args.heads:
            from bench.val21_eval import LAS, copies, heads
            from engine.labels.tissue_model import tissue_em

            for i, (name, brain) in enumerate(heads(False).items()):
                truth = tissue_em(brain, brain > 0, beta=0.35).labels
                for cname, (img, aff, _back, ctruth) in copies(brain, truth, seed=100 + i, thin_rim=False).items():
                    if cname in ("clean", "MPRAGE-like"):
                        data[f"{name} {cname}"] = (img, LAS, ctruth)

    rows: dict[str, dict] = {}
    for name, (scan, aff, lab) in data.items():
        out = {v: {"seconds": []} for v in seg}
        preds = {}
        for r in range(max(1, args.repeats)):
            for v in (seg if r % 2 == 0 else reversed(list(seg))):
                t = time.perf_counter()
                res = seg[v].segment(scan, SegmentConfig(), affine=aff)
                out[v]["seconds"].append(time.perf_counter() - t)
                preds[v] = res.labels
        brain = (lab > 0) | (preds["own"] > 0)
        for v in seg:
            out[v].update(scores(lab, preds[v]))
        out["changed"] = float((preds["own"] != preds["secondary"])[brain].mean())
        rows[name] = out
        print(f"{name}: own {out['own']['mean']:.4f} / secondary {out['secondary']['mean']:.4f}, "
              f"{100 * out['changed']:.2f} % of brain voxels changed", file=sys.stderr, flush=True)

    def mean_of(v, key, names):
        return float(np.mean([rows[n][v][key] for n in names]))

    groups = {"REPORT clean": [n for n in rows if n.startswith("REPORT") and n.endswith("clean")],
              "REPORT MPRAGE-like": [n for n in rows if n.startswith("REPORT") and n.endswith("MPRAGE-like")]}
    groups.update({n: [n] for n in rows if not n.startswith("REPORT")})
    lines = [f"### ENet's secondary planes' network: {second_version} against the model's own "
             f"({time.strftime('%Y-%m-%d %H:%M')}; bench/secondary_eval.py)", "",
             f"Model {seg['own'].info.version}; every 3rd coronal and sagittal slice by the secondary network "
             "or by the model's own. Dice CSF / GM / WM and volume error per tissue against each set's labels "
             "(REPORT: means of the three proxies); 'changed': brain voxels whose label differs between the two; "
             f"seconds: in-process segmentation, median of {args.repeats} alternating runs per scan.", "",
             "| data | network for C+S | Dice CSF / GM / WM | volume error CSF / GM / WM | changed | seconds |",
             "|---|---|---|---|---|---|"]
    for g, names in groups.items():
        if not names:
            continue
        for v in ("own", "secondary"):
            dice = " / ".join(f"{mean_of(v, k, names):.4f}" for k in ("csf", "gm", "wm"))
            vol = " / ".join(f"{100 * mean_of(v, k + '_vol_err', names):+.1f} %" for k in ("csf", "gm", "wm"))
            secs = float(np.median([s for n in names for s in rows[n][v]["seconds"]]))
            changed = f"{100 * float(np.mean([rows[n]['changed'] for n in names])):.2f} %" if v == "secondary" else ""
            lines.append(f"| {g} | {v if v == 'own' else second_version} | {dice} | {vol} | {changed} | {secs:.2f} |")
    text = "\n".join(lines) + "\n"
    report(text, append=not args.no_append)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
