"""`brainseg`: the headless command line (info, stats, evaluate, segment, finetune, train, bench,
export, gui).

Errors exit with status 2 and print one line on stderr, never a traceback. Heavy imports (MXNet)
happen only inside the subcommands that need them, after the thread settings are chosen, so
`brainseg info` starts fast.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("brainseg")


class CliError(Exception):
    """A user error reported as one line, exit status 2."""


def parse_slices(text: str | None, n: int) -> list[int] | None:
    """'10,12,20-30' -> sorted unique indices, each checked against 0..n-1."""
    if text is None:
        return None
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1) if not part.startswith("-") else (part, part)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise CliError(f"slice range {part!r} runs backwards")
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError as exc:
            raise CliError(f"bad slice list {text!r}: {part!r} is not a number or range") from exc
    bad = [k for k in out if not 0 <= k < n]
    if bad:
        raise CliError(f"slice {bad[0]} is outside 0..{n - 1}")
    if not out:
        raise CliError("empty slice list")
    return sorted(out)


def _fmt_shape(shape) -> str:
    return "x".join(str(s) for s in shape)


# ----------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    from .volume import label_volumes, read_volume

    vol = read_volume(args.path)
    d = vol.data
    info = {
        "file": str(vol.path),
        "kind": vol.kind,
        "shape": list(vol.shape),
        "dtype": vol.source_dtype,
        "voxel_size": [round(v, 6) for v in vol.voxel_size],
        "voxel_volume_ml": vol.voxel_volume_ml,
        "orientation": vol.orientation,
        "range": [float(d.min()), float(d.max())],
        "layout_note": vol.layout_note,
        "affine": np.round(vol.affine, 6).tolist(),
    }
    if vol.is_labels:
        per = label_volumes(d, vol.voxel_volume_ml)
        info["voxels"] = {k: v["voxels"] for k, v in per.items()}
        info["volumes_ml"] = {k: round(v["ml"], 4) for k, v in per.items()}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['file']}")
    if vol.layout_note:
        print(f"  note:        {vol.layout_note}")
    print(f"  kind:        {'label map' if vol.is_labels else 'image'}")
    print(f"  shape:       {_fmt_shape(vol.shape)}   dtype {vol.source_dtype}")
    print(f"  voxel size:  {' x '.join(f'{v:g}' for v in vol.voxel_size)} mm   ({vol.voxel_volume_ml * 1000:g} mm^3)")
    print(f"  orientation: {vol.orientation}")
    print(f"  range:       {info['range'][0]:g} .. {info['range'][1]:g}")
    if vol.is_labels:
        for k in info["volumes_ml"]:
            print(f"  {k:<11} {info['voxels'][k]:>10,} voxels  {info['volumes_ml'][k]:>10.2f} mL")
    return 0


# ----------------------------------------------------------------------------- stats
def cmd_stats(args) -> int:
    from .stats import stats_csv_text, volume_stats, write_stats_csv
    from .volume import read_volume

    vol = read_volume(args.mask, kind="labels")
    st = volume_stats(vol.data, vol.voxel_volume_ml, source=str(vol.path))
    if args.csv:
        write_stats_csv(args.csv, st)
    if args.json:
        print(json.dumps(st))
    elif not args.csv or args.csv == "-":
        print(stats_csv_text(st) if args.csv == "-" else _stats_table(st))
    else:
        print(_stats_table(st))
        print(f"wrote {args.csv}")
    return 0


def _stats_table(st: dict) -> str:
    lines = [f"{st['file']}  (voxel {st['voxel_volume_ml'] * 1000:g} mm^3)",
             f"{'class':<14}{'voxels':>12}{'mL':>12}{'% ICV':>9}"]
    for row in st["classes"].values():
        frac = "" if row["icv_fraction"] is None else f"{100 * row['icv_fraction']:.1f}"
        lines.append(f"{row['name']:<14}{row['voxels']:>12,}{row['volume_ml']:>12.2f}{frac:>9}")
    lines.append(f"{'ICV':<14}{'':>12}{st['icv_ml']:>12.2f}{'100.0':>9}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    from .classes import CLASS_KEYS
    from .metrics import confusion_matrix, dice_from_confusion, mean_tissue_dice
    from .volume import read_volume

    pred = read_volume(args.pred, kind="labels")
    ref = read_volume(args.ref, kind="labels")
    if pred.shape != ref.shape:
        raise CliError(f"{args.pred} is {_fmt_shape(pred.shape)} but {args.ref} is {_fmt_shape(ref.shape)}")
    slices = parse_slices(args.slices, ref.shape[2])
    p, r = pred.data, ref.data
    if slices is not None:
        p, r = p[:, :, slices], r[:, :, slices]
    cm = confusion_matrix(r, p)
    dice = dice_from_confusion(cm)
    out = {"dice": dice, "confusion_matrix": cm.tolist(), "mean_tissue_dice": mean_tissue_dice(dice),
           "slices": slices, "pred": str(pred.path), "ref": str(ref.path)}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"Dice (hard, per class){'' if slices is None else f' on {len(slices)} axial slices'}:")
    for k in CLASS_KEYS:
        v = dice[k]
        print(f"  {k:<11} {'-' if v is None else f'{v:.4f}'}")
    print(f"  mean CSF/GM/WM {out['mean_tissue_dice']:.4f}")
    print("Confusion matrix (rows = reference, columns = prediction):")
    print("            " + "".join(f"{k:>12}" for k in CLASS_KEYS))
    for k, row in zip(CLASS_KEYS, cm):
        print(f"  {k:<10}" + "".join(f"{v:>12,}" for v in row))
    return 0


# ----------------------------------------------------------------------------- segment
class _Progress:
    def __init__(self, label: str):
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last = None

    def __call__(self, done: int, total: int) -> None:
        self.last = (done, total)
        if self.tty and total:
            n = int(30 * done / total)
            sys.stderr.write(f"\r{self.label} [{'#' * n}{' ' * (30 - n)}] {done}/{total} slices")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
        elif self.last:
            sys.stderr.write(f"{self.label}: {self.last[0]}/{self.last[1]} slices\n")


def resolve_model(model: str, weights: str | None) -> tuple[Path, str, str]:
    """(model directory, arch, reason) from --model / --weights."""
    from .finetune import ModelStore
    from .hardware import choose_model
    from .weights import read_model_dir

    if weights:
        info = read_model_dir(weights)
        if model not in ("auto", info.arch):
            raise CliError(f"--model {model} but {weights} holds a {info.arch} model")
        return Path(weights), info.arch, f"weights from {weights}"
    arch, reason = choose_model(model)
    return ModelStore().active_dir(arch), arch, reason


def cmd_segment(args) -> int:
    from .mx_env import configure_threads

    configure_threads()
    t0 = time.time()
    from .qc import skull_present
    from .volume import read_volume, save_image, save_labels

    vol = read_volume(args.scan, kind="image")
    if vol.layout_note:
        print(f"warning: {vol.path}: {vol.layout_note}", file=sys.stderr)
    if skull_present(vol.data, vol.voxel_volume_ml):
        print(f"warning: {vol.path} looks like it still has the skull on; labels outside the brain "
              "are unreliable (the networks were trained on skull-stripped scans)", file=sys.stderr)
    model_dir, arch, reason = resolve_model(args.model, args.weights)
    from .inference import SegmentConfig, Segmenter

    seg = Segmenter(model_dir)
    slices = parse_slices(args.slices, vol.shape[2])
    bar = _Progress(f"segment ({arch})")
    res = seg.segment(vol.data, SegmentConfig(batch_size=args.batch_size, uncertainty=bool(args.uncertainty),
                                              slices=tuple(slices) if slices else None), progress=bar)
    bar.close()
    written = save_labels(args.output, res.labels, vol.affine)
    if args.uncertainty:
        save_image(args.uncertainty, res.uncertainty, vol.affine)
        written.append(Path(args.uncertainty))
    print(f"model: {seg.name} - {reason}")
    print(f"segmented {res.slices_run} slices in {res.seconds:.2f} s; total {time.time() - t0:.2f} s")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


# ----------------------------------------------------------------------------- finetune
def cmd_finetune(args) -> int:
    from .mx_env import configure_threads

    configure_threads()
    from .finetune import FinetuneConfig, ModelStore, finetune
    from .volume import read_volume

    scan = read_volume(args.scan, kind="image")
    labels = read_volume(args.labels, kind="labels")
    if scan.shape != labels.shape:
        raise CliError(f"{args.scan} is {_fmt_shape(scan.shape)} but {args.labels} is {_fmt_shape(labels.shape)}")
    slices = parse_slices(args.slices, scan.shape[2])
    if args.__dict__.get("from"):
        src = Path(args.__dict__["from"])
        if not src.is_dir():  # a version name from the store
            store = ModelStore()
            matches = [v.directory for a in ("enet", "unet") for v in store.versions(a) if v.version == str(src)]
            if not matches:
                raise CliError(f"--from {src}: no such model directory or version")
            src = matches[0]
        parent = src
    else:
        parent, _, _ = resolve_model(args.model, None)
    cfg = FinetuneConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, layers=args.layers,
                         augment=not args.no_augment)

    def on_epoch(e):
        d = ", ".join(f"{k} {v:.3f}" for k, v in e.val_dice.items() if v is not None and k != "background")
        print(f"epoch {e.epoch}/{e.epochs}  val Dice {d or '-'}  ({e.elapsed_s:.0f} s, ~{e.eta_s:.0f} s left)",
              file=sys.stderr)

    res = finetune(scan.data, labels.data, slices, parent, args.output, cfg, on_epoch=on_epoch,
                   scan_name=str(scan.path), version=Path(args.output).name)
    b, a = res.before.get("mean_tissue_dice"), res.after.get("mean_tissue_dice")
    print(f"wrote {res.version_dir} (parent {parent}) in {res.seconds:.1f} s; trained on slices {res.train_slices}, "
          f"validated on {res.val_slices}")
    if a is not None:
        print(f"mean CSF/GM/WM Dice on held-back slices: before {b:.4f}, after {a:.4f}")
    return 0


# ----------------------------------------------------------------------------- gui
def cmd_gui(args) -> int:
    # Imported dynamically on purpose: the engine never imports the GUI package statically (an
    # import-linter contract forbids it); this subcommand is only a launcher.
    app = importlib.import_module("brainseg_gui.app")
    return app.main([args.scan] if args.scan else ["--demo"] if args.demo else [])


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="brainseg", description="BrainSeg: brain MRI tissue segmentation")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="shape, voxel size, orientation, range (and volumes of a label map)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("stats", help="tissue volumes in mL of a label map")
    p.add_argument("mask")
    p.add_argument("--csv", metavar="FILE", help="write CSV ('-' for stdout)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("evaluate", help="per-class Dice and confusion matrix of PRED against REF")
    p.add_argument("pred")
    p.add_argument("ref")
    p.add_argument("--json", action="store_true")
    p.add_argument("--slices", help="axial slices (third array axis), e.g. 10,12,20-30")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("segment", help="segment a scan into CSF / grey / white matter")
    p.add_argument("scan")
    p.add_argument("-o", "--output", required=True, help="mask file: .nii, .nii.gz, .hdr or .img")
    p.add_argument("--model", default="auto", choices=("auto", "unet", "enet"))
    p.add_argument("--weights", help="a model directory (shipped, fine-tuned or trained)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--slices", help="only these axial slices")
    p.add_argument("--uncertainty", metavar="FILE", help="also write the softmax-entropy map (NIfTI)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("finetune", help="fine-tune a model on corrected axial slices")
    p.add_argument("scan")
    p.add_argument("labels")
    p.add_argument("--slices", required=True)
    p.add_argument("--model", default="auto", choices=("auto", "unet", "enet"))
    p.add_argument("--from", help="parent model directory or version name (default: the active one)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--layers", choices=("all", "decoder"), default="all")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("-o", "--output", required=True, help="new version directory")
    p.set_defaults(func=cmd_finetune)

    for name, module, adder in EXTRA_COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # pragma: no cover - a broken optional module must not break the CLI
            log.debug("subcommand %s unavailable: %s", name, exc)
            continue
        getattr(mod, adder)(sub)

    p = sub.add_parser("gui", help="open the desktop app")
    p.add_argument("scan", nargs="?")
    p.add_argument("--demo", action="store_true")
    p.set_defaults(func=cmd_gui)
    return ap


# Subcommands that live in their own modules: (name, module, function adding the parser).
EXTRA_COMMANDS = (
    ("train", "engine.oasis_train", "add_train_parser"),
    ("bench", "engine.bench", "add_bench_parser"),
    ("export", "engine.package", "add_export_parser"),
)


def main(argv=None) -> int:
    from .volume import VolumeReadError, VolumeWriteError
    from .weights import WeightsError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except (CliError, VolumeReadError, VolumeWriteError, WeightsError, ValueError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"brainseg: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("brainseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
