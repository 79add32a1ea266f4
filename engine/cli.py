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
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("brainseg")


class CliError(Exception):
    """A user error reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (through main) instead of usage + exit 2,
    and accepts -v after the subcommand too. Subparsers, including those added by EXTRA_COMMANDS
    modules, are built with this class (argparse reuses the parent's class)."""

    def __init__(self, *args, verbose_default=argparse.SUPPRESS, **kwargs):
        kwargs.setdefault("conflict_handler", "resolve")  # a subcommand may redefine -v for itself
        super().__init__(*args, **kwargs)
        self.add_argument("-v", "--verbose", action="store_true", default=verbose_default,
                          help="log progress details; show the traceback of an unexpected error")

    def error(self, message: str):  # type: ignore[override]
        raise CliError(f"{message} (see '{self.prog} --help')")


def _json_safe(obj):
    """NaN/inf -> None so stdout is strict JSON (json.dumps would write a bare NaN)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _print_json(obj) -> None:
    print(json.dumps(_json_safe(obj), allow_nan=False))


def _numbered(slices) -> list:
    """Slice indices as a user reads them (from 1); 'coronal:104' entries too."""
    out = []
    for k in slices:
        if isinstance(k, str) and ":" in k:
            plane, idx = k.rsplit(":", 1)
            out.append(f"{plane}:{int(idx) + 1}")
        else:
            out.append(int(k) + 1)
    return out


def parse_slices(text: str | None, n: int) -> list[int] | None:
    """'10,12,20-30' -> sorted unique 0-based array indices. Slice numbers a user types are 1-based,
    as the GUI shows them (issue #19: one convention everywhere), each checked against 1..n."""
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
    bad = [k for k in sorted(out) if not 1 <= k <= n]
    if bad:
        raise CliError(f"slice {bad[0]} is outside 1..{n} (slice numbers start at 1, as in the app)")
    if not out:
        raise CliError("empty slice list")
    return sorted(k - 1 for k in out)


PLANE_CHOICES = ("axial", "coronal", "sagittal")


def parse_planes(text: str | None) -> tuple[str, ...]:
    """'axial,coronal,sagittal' (the default: the three views fused) or a subset, e.g. 'axial'."""
    if not text:
        from engine.infer.inference import DEFAULT_PLANES

        return DEFAULT_PLANES
    planes = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    bad = [p for p in planes if p not in PLANE_CHOICES]
    if bad or not planes:
        raise CliError(f"--planes {text!r}: choose from {', '.join(PLANE_CHOICES)} (comma-separated)")
    return tuple(dict.fromkeys(planes))


def _fmt_shape(shape) -> str:
    return "x".join(str(s) for s in shape)


def _fmt_vox(voxel_size) -> str:
    return "x".join(f"{v:g}" for v in voxel_size) + " mm"


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


# ----------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    from engine.io.conform import Conform
    from engine.io.volume import label_volumes, read_volume

    vol = read_volume(args.path, series=args.series)
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
        "geometry_note": vol.geometry_note,
        "orientation_source": vol.orientation_source,
        "warnings": list(vol.warnings),
        "for_the_network": Conform.for_grid(vol.shape, vol.affine).describe() or "used as stored (LAS, 1 mm)",
        "affine": np.round(vol.affine, 6).tolist(),
    }
    if not vol.is_labels:  # what the app, segment and batch say about this scan (engine/document.py)
        from engine.document import ScanDocument

        doc = ScanDocument(vol)
        facts = doc.facts()
        info["facts"] = [{"level": f.level, "text": f.text} for f in facts.facts]
        info["qc_flags"] = facts.flags
        info["skull_on"] = bool(doc.skull_on)
    if vol.is_labels:
        per = label_volumes(d, vol.voxel_volume_ml)
        info["voxels"] = {k: v["voxels"] for k, v in per.items()}
        info["volumes_ml"] = {k: round(v["ml"], 4) for k, v in per.items()}
    if args.json:
        _print_json(info)
        return 0
    print(f"{info['file']}")
    if vol.layout_note:
        print(f"  note:        {vol.layout_note}")
    print(f"  kind:        {'label map' if vol.is_labels else 'image'}")
    print(f"  shape:       {_fmt_shape(vol.shape)}   dtype {vol.source_dtype}")
    print(f"  voxel size:  {' x '.join(f'{v:g}' for v in vol.voxel_size)} mm   ({vol.voxel_volume_ml * 1000:g} mm^3)")
    how = {"anatomy": " (found from the anatomy: the file stores none)",
           "assumed": " (assumed: the file stores none)"}.get(vol.orientation_source, "")
    print(f"  orientation: {vol.orientation}{how}")
    if vol.geometry_note and vol.orientation_source != "header":
        print(f"  note:        {vol.geometry_note}")
    for w in vol.warnings:
        print(f"  warning:     {w}")
    print(f"  network:     {info['for_the_network']}")
    for f in info.get("facts", []):
        if f["text"].startswith("atlas space") or f["text"].startswith("skull on"):
            print(f"  {f['level'] + ':':<13}{f['text']}")
    print(f"  range:       {info['range'][0]:g} .. {info['range'][1]:g}")
    if vol.is_labels:
        for k in info["volumes_ml"]:
            print(f"  {k:<11} {info['voxels'][k]:>10,} voxels  {info['volumes_ml'][k]:>10.2f} mL")
    return 0


# ----------------------------------------------------------------------------- stats
def cmd_stats(args) -> int:
    from engine.io.stats import stats_csv_text, volume_stats, write_stats_csv
    from engine.io.volume import read_volume

    vol = read_volume(args.mask, kind="labels")
    st = volume_stats(vol, space=scan_space(vol, args))
    to_stdout = args.csv == "-"
    if args.csv and not to_stdout:
        write_stats_csv(args.csv, st)
    if args.json:
        if to_stdout:
            raise CliError("--json and --csv - both want stdout; give --csv a file name")
        _print_json(st)
    elif to_stdout:
        sys.stdout.write(stats_csv_text(st))
    else:
        print(_stats_table(st))
        if args.csv:
            print(f"wrote {args.csv}")
    return 0


def _stats_table(st: dict) -> str:
    from engine.io.space import ETIV_LABEL

    atlas = st.get("space") == "atlas"
    native = st.get("native_volumes_ml") if atlas else None
    unit = st.get("volume_unit", "mL")
    w = max(12, len(unit) + 2)
    lines = [f"{st['file']}  (voxel {st['voxel_volume_ml'] * 1000:g} mm^3)"]
    if atlas:
        lines.append(_space_line(st))
    lines.append(f"{'class':<14}{'voxels':>12}{unit:>{w}}{'% ICV':>9}" + (f"{'native mL':>12}" if native else ""))
    for key, row in st["classes"].items():
        frac = "" if row["icv_fraction"] is None else f"{100 * row['icv_fraction']:.1f}"
        lines.append(f"{row['name']:<14}{row['voxels']:>12,}{row['volume_ml']:>{w}.2f}{frac:>9}"
                     + (f"{native[key]:>12.2f}" if native else ""))
    lines.append(f"{'ICV':<14}{'':>12}{st['icv_ml']:>{w}.2f}{'100.0':>9}"
                 + (f"{st['native_icv_ml']:>12.2f}" if native else ""))
    if st.get("etiv_oasis_ml") is not None:
        lines.append(f"{ETIV_LABEL}: {st['etiv_oasis_ml']:.1f} mL")
    return "\n".join(lines)


def _space_line(st: dict) -> str:
    """What an atlas-space volume's mL are, and how to get native ones."""
    text = (f"atlas space ({st['space_reason']}): volumes are atlas-space mL (every head scaled to the "
            "atlas's size), not the brain's own")
    if st.get("asf") is not None:
        return text + f"; native mL = atlas mL / ASF {st['asf']:g}"
    return text + "; give --asf (OASIS's atlas scaling factor) for native mL"


def scan_space(vol, args):
    """The engine.io.space.Space of a scan or mask read for `args` (--atlas-space, --asf)."""
    from engine.io.space import Space, atlas_space_reason

    vol.atlas_marked = vol.atlas_marked or bool(getattr(args, "atlas_space", False))
    asf = getattr(args, "asf", None)
    if asf is not None and atlas_space_reason(vol) is None:
        raise CliError(f"--asf: {vol.name} is in native space (no _t88_ in its name, NIfTI transform code "
                       f"{vol.xform_code}); an ASF converts atlas-space volumes: add --atlas-space if it is "
                       "registered to an atlas")
    return Space.of(vol, asf)


# ----------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    from engine.core.classes import CLASS_KEYS
    from engine.core.metrics import confusion_matrix, dice_from_confusion, mean_tissue_dice
    from engine.io.volume import read_volume

    pred = read_volume(args.pred, kind="labels")
    ref = read_volume(args.ref, kind="labels")
    if pred.shape != ref.shape:
        raise CliError(f"{args.pred} is {_fmt_shape(pred.shape)} but {args.ref} is {_fmt_shape(ref.shape)}")
    if not np.allclose(pred.affine, ref.affine, atol=1e-3):
        print(f"warning: {args.pred} and {args.ref} have different voxel-to-world affines "
              f"({pred.orientation} {_fmt_vox(pred.voxel_size)} vs {ref.orientation} {_fmt_vox(ref.voxel_size)}); "
              "comparing voxel by voxel anyway", file=sys.stderr)
    from engine.io.conform import Conform

    ax = Conform.for_grid(ref.shape, ref.affine).native_axis("axial")
    slices = parse_slices(args.slices, ref.shape[ax])
    p, r = pred.data, ref.data
    if slices is not None:
        p, r = np.take(p, slices, axis=ax), np.take(r, slices, axis=ax)
    cm = confusion_matrix(r, p)
    dice = dice_from_confusion(cm)
    out = {"dice": dice, "confusion_matrix": cm.tolist(), "mean_tissue_dice": mean_tissue_dice(dice),
           "slices": None if slices is None else [k + 1 for k in slices],  # numbered as typed (from 1)
           "pred": str(pred.path), "ref": str(ref.path)}
    if args.json:
        _print_json(out)
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
        if self.tty and self.last:
            sys.stderr.write("\n")
        elif self.last:
            sys.stderr.write(f"{self.label}: {self.last[0]}/{self.last[1]} slices\n")


def resolve_precision(model_dir: Path, requested: str) -> tuple[str, str]:
    """(precision, a note for the output or ''). auto: INT8 where it is offered for the model
    (engine.infer.inference.default_precision), FP32 otherwise; int8 asked for where it is not
    offered is an error that says why."""
    from engine.infer.inference import default_precision, int8_offer

    if requested == "int8":
        ok, why = int8_offer(model_dir)
        if not ok:
            raise CliError(f"--precision int8: {why}")
        return "int8", ""
    if requested == "fp32":
        return "fp32", ""
    precision, why = default_precision(model_dir)
    return precision, (f"INT8 by default for this model ({why}); --precision fp32 runs FP32"
                       if precision == "int8" else "")


def resolve_model(model: str, weights: str | None) -> tuple[Path, str, str]:
    """(model directory, arch, reason) from --model / --weights (engine.store.versions)."""
    from engine.store.versions import resolve_model as _resolve

    return _resolve(model, weights)


LABEL_FORMATS = (".nii.gz", ".nii", ".hdr", ".img")
IMAGE_FORMATS = (".nii.gz", ".nii")


def check_output(path: str, formats: tuple[str, ...], inputs: tuple[str, ...] = ()) -> None:
    """Fail before any work is done if `path` has the wrong extension or would overwrite an input."""
    from engine.io.volume import files_of

    if not path.lower().endswith(formats):
        raise CliError(f"{path}: unknown output format; use {', '.join(formats)}")
    for src in inputs:
        if files_of(path) & files_of(src):
            raise CliError(f"{path}: refusing to overwrite the input {src}")


def cmd_segment(args) -> int:
    from engine.infer import helper as helpers

    # (this process's threads, the helper's) or one process; a few slices are not shared: all cores here
    threads = helpers.plan(args.processes) if not args.slices else None
    t0 = time.time()  # (this process's threads are set in _segment, once it knows whether it extracts a brain)
    planes = parse_planes(args.planes)
    check_output(args.output, LABEL_FORMATS, (args.scan,))
    if args.uncertainty:
        check_output(args.uncertainty, IMAGE_FORMATS, (args.scan, args.output))
    model_dir, arch, reason = resolve_model(args.model, args.weights)
    if args.int8 and args.precision not in ("auto", "int8"):
        raise CliError(f"--int8 and --precision {args.precision}: choose one")
    precision, precision_note = resolve_precision(model_dir, "int8" if args.int8 else args.precision)
    # the helper loads its copy of the model while this process reads the scan and loads its own
    helper = helpers.start(model_dir, precision, threads[1]) if threads else None
    try:
        return _segment(args, t0, planes, (model_dir, arch, reason), (precision, precision_note), helper, threads)
    finally:
        if helper is not None:
            helper.close()


def _segment(args, t0, planes, model, precision, helper, threads) -> int:
    from engine.core.mx_env import configure_threads
    from engine.document import open_scan
    from engine.infer.scan import decide_strip
    from engine.io.labeldesc import BRAIN_MASK_CLASSES
    from engine.io.volume import save_image, save_labels

    (model_dir, arch, reason), (precision, precision_note) = model, precision
    doc = open_scan(args.scan, series=args.series)  # as the app and batch open it, and say the same
    vol = doc.scan
    space = scan_space(vol, args)
    slices = parse_slices(args.slices, vol.shape[doc.axial_axis])
    if args.strip == "off" and doc.skull_on:
        print(f"warning: {vol.path} looks like it still has the skull on and --strip off was given; labels "
              "outside the brain are unreliable", file=sys.stderr)
    if args.mask_out:
        check_output(args.mask_out, LABEL_FORMATS, (args.scan, args.output))
    for line in doc.facts(check_skull=False).lines(vol.path):  # (after the checks that end with one error line)
        print(line, file=sys.stderr)
    decision = decide_strip(vol.data, vol.affine, args.strip)  # (numpy: MXNet is not loaded yet)
    if decision.run and helper is not None:  # the brain extractor runs first, here: all cores for it
        helper.close()  # (1 + 1 threads: a raw head 8.5 -> 10.2 s, the extraction on one thread)
        helper = threads = None
        logging.getLogger(__name__).info("brain extraction first: one process, all cores (no helper)")
    configure_threads(threads=threads[0] if threads else None)
    from engine.infer.inference import SegmentConfig, Segmenter

    seg = Segmenter(model_dir, precision=precision)
    seg.helper = helper
    from engine.infer.scan import segment_scan

    bar = _Progress(f"segment ({arch}, {'+'.join(planes) if not slices else 'axial'})")
    try:
        res, decision, strip = segment_scan(
            seg, vol.data, vol.affine,
            SegmentConfig(batch_size=args.batch_size, uncertainty=bool(args.uncertainty),
                          slices=tuple(slices) if slices else None, planes=planes),
            strip=args.strip, progress=bar, decision=decision)
    finally:
        bar.close()
    if helper is not None:  # its part is done: let it go while this process writes (reaped at the end)
        helper.close(wait=False)
    _report_strip(vol, decision, strip)
    from engine.io.space import mask_xform_code

    written = save_labels(args.output, res.labels, vol.affine, xform_code=mask_xform_code(vol))
    if args.mask_out:
        if strip is None:
            raise CliError(f"--mask-out: no brain mask was made ({decision.reason})")
        written += save_labels(args.mask_out, strip.mask.astype(np.uint8), vol.affine, xform_code=mask_xform_code(vol), classes=BRAIN_MASK_CLASSES)
    if args.uncertainty:
        save_image(args.uncertainty, res.uncertainty, vol.affine, xform_code=mask_xform_code(vol))
        written.append(Path(args.uncertainty))
    print(f"model: {seg.name} - {reason}")
    if precision_note:
        print(f"precision: {precision_note}")
    print(f"segmented {res.slices_run} slices ({'+'.join(res.planes)}) in {res.seconds:.2f} s; "
          f"total {time.time() - t0:.2f} s")
    if not slices:
        from engine.io.stats import volume_stats

        for line in _volumes_lines(volume_stats(res.labels, vol.voxel_volume_ml, space=space)):
            print(line)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _volumes_lines(st: dict) -> list[str]:
    """`segment`'s summary of the volumes, in the space they are in."""
    from engine.io.space import ETIV_LABEL

    def row(ml: dict, icv: float) -> str:
        return ", ".join(f"{k.upper()} {ml[k]:.1f}" for k in ("csf", "gm", "wm")) + f", TIV {icv:.1f}"

    lines = [f"volumes ({st['volume_unit']}): {row(st['volumes_ml'], st['icv_ml'])}"]
    if st.get("space") == "atlas":
        lines.append(_space_line(st))
        if st.get("native_volumes_ml"):
            lines.append(f"volumes (native mL): {row(st['native_volumes_ml'], st['native_icv_ml'])}; "
                         f"{ETIV_LABEL} {st['etiv_oasis_ml']:.1f} mL")
    return lines


def _report_strip(vol, decision, strip) -> None:
    """One line on stderr about brain extraction (and a warning when it is unsure)."""
    if strip is None:
        if decision.mode != "off":
            print(f"note: {vol.path}: {decision.reason}", file=sys.stderr)
        return
    print(f"note: {vol.path}: {decision.reason}: {strip.volume_ml:,.0f} mL intracranial in {strip.seconds:.1f} s",
          file=sys.stderr)
    if strip.unsure:
        print(f"warning: {vol.path}: brain extraction is unsure: {'; '.join(strip.unsure_reasons)}", file=sys.stderr)


def cmd_strip(args) -> int:
    from engine.core.mx_env import configure_threads
    from engine.io.labeldesc import BRAIN_MASK_CLASSES

    configure_threads()
    from engine.infer.scan import extract
    from engine.io.volume import save_image, save_labels

    check_output(args.output, LABEL_FORMATS, (args.scan,))
    if args.masked_scan:
        check_output(args.masked_scan, IMAGE_FORMATS, (args.scan, args.output))
    from engine.document import open_scan

    doc = open_scan(args.scan, series=args.series)
    vol = doc.scan
    for f in doc.facts(check_skull=False).facts:
        if f.kind != "network":  # the extractor has its own grid
            print(f"{f.level}: {vol.path}: {f.text}", file=sys.stderr)
    decision, res = extract(vol.data, vol.affine, "on" if args.force else "auto", model_dir=args.weights)
    if res is None:
        mask = (vol.data != 0).astype(np.uint8)
        print(f"note: {vol.path}: {decision.reason}; the mask is its nonzero voxels (--force to extract anyway)",
              file=sys.stderr)
        ml = float(mask.sum()) * vol.voxel_volume_ml
    else:
        mask = res.mask.astype(np.uint8)
        ml = res.volume_ml
        _report_strip(vol, decision, res)
    from engine.io.space import mask_xform_code

    code = mask_xform_code(vol)
    written = save_labels(args.output, mask, vol.affine, xform_code=code, classes=BRAIN_MASK_CLASSES)
    if args.masked_scan:
        from engine.infer.scan import masked_scan

        written += save_image(args.masked_scan, np.where(mask > 0, vol.data, 0).astype(np.float32)
                              if res is None else masked_scan(vol.data, mask > 0), vol.affine, xform_code=code)
    if args.json:
        _print_json({"scan": str(vol.path), "mask": str(args.output), "stripped": res is not None,
                     "reason": decision.reason, "intracranial_ml": round(ml, 1),
                     "unsure": res.unsure_reasons if res else [], "seconds": round(res.seconds, 2) if res else 0.0})
    else:
        print(f"intracranial volume: {ml:,.1f} mL")
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


# ----------------------------------------------------------------------------- finetune
def check_new_version_dir(path: str) -> None:
    """A fine-tune writes a new version: never into an existing non-empty folder (an earlier
    version), never into the shipped weights."""
    from engine.core.paths import WEIGHTS_DIR

    out = Path(path).resolve()
    if out == WEIGHTS_DIR.resolve() or WEIGHTS_DIR.resolve() in out.parents:
        raise CliError(f"{path}: that is where the shipped weights live; write the new version elsewhere")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CliError(f"{path}: exists and is not empty; a fine-tune writes a new version and never "
                       "overwrites one (choose a new folder)")


def cmd_finetune(args) -> int:
    from engine.core.mx_env import configure_threads

    configure_threads()
    from engine.io.volume import read_volume
    from engine.store.versions import ModelStore
    from engine.train.finetune import FinetuneConfig, finetune

    if args.output:
        check_new_version_dir(args.output)
    from engine.document import open_scan

    doc = open_scan(args.scan, series=args.series)
    scan = doc.scan
    labels = read_volume(args.labels, kind="labels")
    if scan.shape != labels.shape:
        raise CliError(f"{args.scan} is {_fmt_shape(scan.shape)} but {args.labels} is {_fmt_shape(labels.shape)}")
    from engine.infer.scan import decide_strip, masked_scan

    decision = decide_strip(scan.data, scan.affine, args.strip)
    if decision.run:  # a head: the networks see the brain inside its mask, here the labels' nonzero voxels
        scan.data = masked_scan(scan.data, labels.data > 0)
        print(f"note: {scan.path}: {decision.reason.split(':')[0]}: learning from the scan inside the labels' "
              "brain (nonzero voxels)", file=sys.stderr)
    from engine.io.conform import Conform

    plane = args.plane
    picked = parse_slices(args.slices, scan.shape[Conform.for_grid(scan.shape, scan.affine).native_axis(plane)])
    slices, others = (picked, None) if plane == "axial" else ([], {plane: picked})
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

    store = None
    if args.output:
        out, version = Path(args.output), Path(args.output).name
    else:  # a new version in the model store, as the GUI's panel makes
        from engine.nets.weights import read_model_dir

        store = ModelStore()
        arch = read_model_dir(parent).arch
        version, out = store.new_version_dir(arch)
    res = finetune(scan.data, labels.data, slices, parent, out, cfg, on_epoch=on_epoch, plane_slices=others,
                   scan_name=str(scan.path), version=version, affine=scan.affine)
    b, a = res.before.get("mean_tissue_dice"), res.after.get("mean_tissue_dice")
    print(f"wrote {res.version_dir} (parent {parent}) in {res.seconds:.1f} s; trained on slices {_numbered(res.train_slices)}, "
          f"validated on {_numbered(res.val_slices)}")
    if a is not None:
        print(f"mean CSF/GM/WM Dice on the same held-back slices: parent {b:.4f}, new version {a:.4f}")
    if store is not None:
        from engine.train.finetune import activation_verdict

        ok, why = activation_verdict(res.before, res.after)
        if not ok and not args.activate:
            print(f"{version} is in the store but NOT active: {why} "
                  f"(brainseg models activate {version} to use it anyway)")
        else:
            store.activate(arch, out)
            print(f"{version} is now the active {arch} model (brainseg models rollback undoes this)")
    return 0


# ----------------------------------------------------------------------------- postprocess
PLANE_NAMES = ("axial", "coronal", "sagittal")


def parse_fill_between(text: str, vol) -> tuple[int, int, int, str]:
    """'axial:40-60' (anatomical plane, slice numbers along the mask's own axis for that plane,
    1-based as in the app) or '2:40-60' (an array axis) -> (axis, first, last, plane name), first
    and last as 0-based indices."""
    from engine.io.conform import Conform

    try:
        plane, rng = text.split(":", 1)
        a, b = rng.split("-", 1)
        first, last = int(a), int(b)
    except ValueError as exc:
        raise CliError(f"--fill-between {text!r}: expected PLANE:FIRST-LAST, e.g. axial:40-60") from exc
    plane = plane.strip().lower()
    if plane in PLANE_NAMES:
        axis = Conform.for_grid(vol.shape, vol.affine).native_axis(plane)
    elif plane in ("0", "1", "2"):
        axis = int(plane)
    else:
        raise CliError(f"--fill-between {text!r}: plane must be axial, coronal, sagittal or an array axis 0-2")
    n = vol.shape[axis]
    if not 1 <= first < last <= n:
        raise CliError(f"--fill-between {text!r}: need 1 <= FIRST < LAST <= {n} along that axis "
                       "(slice numbers start at 1, as in the app)")
    return axis, first - 1, last - 1, plane


def cmd_postprocess(args) -> int:
    """Label operations on a mask file, in a fixed order: fill between slices, remove small
    islands, keep the largest piece, smooth. The output keeps the mask's grid and affine."""
    from engine.io.volume import read_volume, save_labels
    from engine.labels import ops

    if not (args.fill_between or args.remove_islands is not None or args.keep_largest or args.smooth is not None):
        raise CliError("nothing to do: give --fill-between, --remove-islands, --keep-largest and/or --smooth")
    check_output(args.output, LABEL_FORMATS, inputs=(args.mask,))
    if args.remove_islands is not None and args.remove_islands < 1:
        raise CliError(f"--remove-islands {args.remove_islands}: the minimum size is at least 1 voxel")
    if args.smooth is not None and not args.smooth > 0:
        raise CliError(f"--smooth {args.smooth}: give a positive number of mm")
    vol = read_volume(args.mask, kind="labels")
    fill = parse_fill_between(args.fill_between, vol) if args.fill_between else None
    lab = vol.data
    steps = []
    try:
        if fill:
            axis, first, last, plane = fill
            keys = ops.key_slices(lab, axis, first, last)
            new = ops.fill_between(lab, axis, first, last, keys)
            steps.append((f"fill between {plane} slices {first + 1}-{last + 1} (drawn: {len(keys)})", lab, new))
            lab = new
        if args.remove_islands is not None:
            new = ops.remove_islands(lab, args.remove_islands)
            steps.append((f"remove islands < {args.remove_islands} voxels", lab, new))
            lab = new
        if args.keep_largest:
            new = ops.keep_largest(lab)
            steps.append(("keep the largest piece", lab, new))
            lab = new
        if args.smooth:
            new = ops.smooth(lab, args.smooth, vol.voxel_size, method=args.smooth_method,
                             keep_outline=not args.smooth_outline)
            steps.append((f"smooth {args.smooth:g} mm ({args.smooth_method}"
                           f"{', outline too' if args.smooth_outline else ', outline kept'})", lab, new))
            lab = new
    except ops.OpError as exc:
        raise CliError(f"{args.mask}: {exc}") from exc
    from engine.io.space import mask_xform_code

    save_labels(args.output, lab, vol.affine, xform_code=mask_xform_code(vol))
    for what, before, after in steps:
        print(f"{what}: {int((before != after).sum()):,} voxels changed")
    print(f"tissue volumes changed: {ops.describe_change(ops.volume_change(vol.data, lab))}")
    print(f"wrote {args.output}")
    return 0


# ----------------------------------------------------------------------------- png
def cmd_png(args) -> int:
    """Colour PNGs of a mask (over its scan with --scan), as the app shows them."""
    from engine.io.export import export_png, export_png_slices
    from engine.io.volume import read_volume

    vol = read_volume(args.mask, kind="labels")
    scan = None
    if args.scan:
        sv = read_volume(args.scan, kind="image", series=args.series)
        if sv.shape != vol.shape:
            raise CliError(f"{args.scan} is {_fmt_shape(sv.shape)} but {args.mask} is {_fmt_shape(vol.shape)}")
        scan = sv.data
    if not 0 <= args.opacity <= 1:
        raise CliError(f"--opacity {args.opacity}: give a number from 0 to 1")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CliError(f"{out}: exists and is not a folder")
    from engine.io.conform import Conform

    # drawn in the scan's geometry when one is given (as the app shows a mask on its scan)
    affine = sv.affine if args.scan else vol.affine
    if args.values:
        files = export_png_slices(vol.data, out, axis=Conform.for_grid(vol.shape, affine).native_axis("axial"))
    else:
        files = export_png(vol.data, affine, out, plane=args.plane, scan=scan, montage=args.montage,
                           panels=args.panels, opacity=args.opacity)
    print(f"wrote {len(files)} PNG file{'s' if len(files) != 1 else ''} to {out}")
    return 0


# ----------------------------------------------------------------------------- models
def cmd_models(args) -> int:
    """The model store from the command line: list versions, activate one, roll back."""
    from engine.core.hardware import choose_model
    from engine.store.versions import MissingVersionError, ModelStore

    store = ModelStore()
    archs = [args.model] if args.model in ("unet", "enet") else ["unet", "enet"]
    if args.action == "list":
        rows = []
        for arch in archs:
            try:
                active = str(store.active_dir(arch))
            except MissingVersionError as exc:  # listed, with the problem said
                print(f"warning: {exc}", file=sys.stderr)
                active = ""
            for v in store.versions(arch):
                rows.append({"arch": arch, "version": v.version, "shipped": v.shipped, "parent": v.parent,
                             "created": v.created, "active": str(v.directory) == active,
                             "mean_tissue_dice": (v.after or {}).get("mean_tissue_dice"),
                             "directory": str(v.directory)})
        for p in store.problems:
            print(f"warning: {p}", file=sys.stderr)
        if args.json:
            _print_json(rows)
            return 0
        for r in rows:
            dice = "" if r["mean_tissue_dice"] is None else f"  held-back Dice {r['mean_tissue_dice']:.3f}"
            origin = " (shipped)" if r["shipped"] else f" <- {r['parent']}"
            print(f"{'*' if r['active'] else ' '} {r['arch']:<5} {r['version']:<18}{origin}{dice}")
        return 0
    if args.action == "activate":
        if not args.version:
            raise CliError("models activate needs a VERSION (see 'brainseg models list')")
        if args.version == "shipped":
            for arch in archs:
                print(f"{arch}: {store.use_shipped(arch).name} (shipped) is active")
            return 0
        for arch in archs:
            for v in store.versions(arch):
                if v.version == args.version or str(v.directory) == args.version:
                    store.activate(arch, v.directory)
                    print(f"{arch}: {v.version} is active")
                    return 0
        raise CliError(f"no model version {args.version!r} (see 'brainseg models list')")
    arch = args.model if args.model in ("unet", "enet") else choose_model("auto")[0]
    back = store.rollback(arch)
    print(f"{arch}: rolled back to {back.name}")
    return 0


# ----------------------------------------------------------------------------- gui
def cmd_gui(args) -> int:
    """A launcher: the app runs as its own process (`python -m brainseg_gui`), so the engine never
    imports the GUI, not even dynamically (issue #20: a dynamic import passed around the
    import-linter contract)."""
    argv = [args.scan] if args.scan else ["--demo"] if args.demo else []
    cmd = [sys.executable, "-m", "brainseg_gui", *argv]
    if os.name == "posix":  # the app takes this process's place: a signal sent to `brainseg gui` (a
        sys.stdout.flush()  # terminal closing, a kill from a script) reaches the app itself
        sys.stderr.flush()  # instead of leaving it running without its launcher
        os.execv(sys.executable, cmd)
    return subprocess.call(cmd)


# ----------------------------------------------------------------------------- parser
def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line. With `command` (the subcommand about to run), the subcommands that
    live in other modules are imported only if it is one of them: `brainseg segment` then skips
    importing training, benchmarking, packaging and batch code (0.3 s of its start-up, issue #21).
    A command that is none of them (a typo, --help) gets every subcommand, so the usage lists all."""
    from engine.io.space import add_space_arguments as space_arguments

    ap = _Parser(prog="brainseg", description="BrainSeg: brain MRI tissue segmentation", verbose_default=False)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", help="shape, voxel size, orientation, range (and volumes of a label map)")
    p.add_argument("path", help="a scan or mask file, or a DICOM series (its folder or any of its files)")
    p.add_argument("--series", metavar="UID", help="a DICOM folder with several series: which one (UID or number)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("stats", help="tissue volumes in mL of a label map")
    p.add_argument("mask")
    p.add_argument("--csv", metavar="FILE", help="write CSV ('-' for stdout)")
    p.add_argument("--json", action="store_true")
    space_arguments(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("evaluate", help="per-class Dice and confusion matrix of PRED against REF")
    p.add_argument("pred")
    p.add_argument("ref")
    p.add_argument("--json", action="store_true")
    p.add_argument("--slices", help="axial slices (along the reference's superior-inferior array axis; numbers from 1, "
                   "as in the app), e.g. 10,12,20-30")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("segment", help="segment a scan into CSF / grey / white matter")
    p.add_argument("scan", help="a scan file, or a DICOM series (its folder or any of its files)")
    p.add_argument("--series", metavar="UID", help="a DICOM folder with several series: which one (UID or number)")
    p.add_argument("-o", "--output", required=True, help="mask file: .nii, .nii.gz, .hdr or .img")
    p.add_argument("--model", default="auto", choices=("auto", "unet", "enet"))
    p.add_argument("--weights", help="a model directory (shipped, fine-tuned or trained)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="slices per forward pass (default: the fastest measured, U-Net 2, ENet 16)")
    p.add_argument("--slices", help="only these axial slices (numbers from 1, as in the app, along the scan's own "
                   "superior-inferior array axis), e.g. 10,12,20-30; a single axial pass")
    p.add_argument("--planes", help="anatomical planes whose class probabilities are fused (default "
                   "axial,coronal,sagittal; 'axial' is the single-plane pass)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "int8"),
                   help="auto (default): INT8 where it was measured faster with every class's Dice within 0.005 "
                        "(model.json 'int8'; today U-Net), FP32 otherwise")
    p.add_argument("--int8", action="store_true", help="the same as --precision int8")
    p.add_argument("--uncertainty", metavar="FILE", help="also write the softmax-entropy map (NIfTI)")
    space_arguments(p)
    p.add_argument("--strip", default="auto", choices=("auto", "on", "off"),
                   help="brain extraction: auto (when a skull is found; default), on (always), off (never)")
    p.add_argument("--mask-out", metavar="FILE", help="also write the brain mask used (0/1)")
    p.add_argument("--processes", default="auto", choices=("auto", "1", "2"),
                   help="auto (default): a second process shares the network's batches on a machine with 2+ cores "
                        "and no GPU, unless OMP_NUM_THREADS is set; the same labels either way (engine/infer/helper.py)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("strip", help="brain extraction: an intracranial mask of a head scan")
    p.add_argument("scan", help="a scan file, or a DICOM series (its folder or any of its files)")
    p.add_argument("--series", metavar="UID", help="a DICOM folder with several series: which one (UID or number)")
    p.add_argument("-o", "--output", required=True, help="mask file (0/1): .nii, .nii.gz, .hdr or .img")
    p.add_argument("--masked-scan", metavar="OUT", help="also write the scan with everything outside the mask 0")
    p.add_argument("--force", action="store_true", help="extract even when the scan looks skull-stripped")
    p.add_argument("--weights", help="a brain-extraction model directory (default: the shipped one)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_strip)

    p = sub.add_parser("finetune", help="fine-tune a model on corrected slices")
    p.add_argument("scan")
    p.add_argument("--plane", choices=("axial", "coronal", "sagittal"), default="axial",
                   help="the plane the --slices were corrected in (default axial)")
    p.add_argument("--series", metavar="UID", help="a DICOM folder with several series: which one (UID or number)")
    p.add_argument("labels")
    p.add_argument("--slices", required=True, help="the corrected slices, numbered from 1 as in the app, e.g. 40,52-55")
    p.add_argument("--model", default="auto", choices=("auto", "unet", "enet"))
    p.add_argument("--from", help="parent model directory or version name (default: the active one)")
    p.add_argument("--epochs", type=_positive_int, default=20)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=_positive_int, default=4)
    p.add_argument("--layers", choices=("all", "decoder"), default="all")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("-o", "--output", help="write the new version to this new folder; without it, the version is "
                   "added to the model store and activated unless it scored lower than its parent")
    p.add_argument("--activate", action="store_true",
                   help="without -o: activate the new version even if it scored lower than its parent")
    p.add_argument("--strip", default="auto", choices=("auto", "on", "off"),
                   help="a head scan (skull on): learn inside the labels' brain mask (auto: when a skull is found)")
    p.set_defaults(func=cmd_finetune)


    p = sub.add_parser("models", help="model versions: list, activate VERSION, rollback")
    p.add_argument("action", choices=("list", "activate", "rollback"))
    p.add_argument("version", nargs="?", help="with activate: a version name or folder")
    p.add_argument("--model", default="all", choices=("all", "unet", "enet"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("postprocess", help="clean up a mask: fill between slices, islands, largest piece, smoothing")
    p.add_argument("mask")
    p.add_argument("-o", "--output", required=True, help="output mask (.nii.gz, .nii, .hdr, .img)")
    p.add_argument("--fill-between", metavar="PLANE:FIRST-LAST",
                   help="interpolate the slices between the drawn ones, e.g. axial:40-60 (slice numbers from 1, "
                   "as in the app)")
    p.add_argument("--remove-islands", type=int, metavar="MIN_VOXELS",
                   help="pieces of a class smaller than this take the label around them")
    p.add_argument("--keep-largest", action="store_true", help="keep the largest connected piece of the brain")
    p.add_argument("--smooth", type=float, metavar="MM", help="smooth class boundaries by about MM millimetres")
    p.add_argument("--smooth-method", choices=("gaussian", "median"), default="gaussian")
    p.add_argument("--smooth-outline", action="store_true",
                   help="smooth the brain's outline too (default: only the classes inside it)")
    p.set_defaults(func=cmd_postprocess)

    p = sub.add_parser("png", help="colour PNG images of a mask, optionally over its scan, as the app shows them")
    p.add_argument("mask")
    p.add_argument("--scan", help="draw the labels over this scan")
    p.add_argument("--series", metavar="UID", help="a DICOM folder with several series: which one (UID or number)")
    p.add_argument("--plane", choices=("axial", "coronal", "sagittal"), default="axial")
    p.add_argument("--montage", action="store_true", help="one grid image of evenly spaced slices")
    p.add_argument("--panels", type=_positive_int, default=24, help="slices in a montage (default 24)")
    p.add_argument("--opacity", type=float, default=0.5, help="label opacity over the scan (0-1)")
    p.add_argument("--values", action="store_true",
                   help="instead: one grey PNG per axial array slice with the class values 0-3 (for training data)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.set_defaults(func=cmd_png)

    p = sub.add_parser("gui", help="open the desktop app")
    p.add_argument("scan", nargs="?")
    p.add_argument("--demo", action="store_true")
    p.set_defaults(func=cmd_gui)
    # Subcommands kept in their own modules (see EXTRA_COMMANDS). A module not written yet is
    # skipped quietly; one that exists but fails to import is named on stderr, and the other
    # subcommands keep working. These modules must not import mxnet at top level.
    known = set(sub.choices) | {n for n, _m, _a in EXTRA_COMMANDS}
    for name, module, adder in EXTRA_COMMANDS:
        if command in known and command != name:  # another known subcommand runs: not needed
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                log.warning("subcommand %s unavailable: %s needs %s", name, module, exc.name)
            continue
        except Exception as exc:  # a broken optional module must not break `info` or `segment`
            log.warning("subcommand %s unavailable: %s failed to import (%s: %s)", name, module,
                        type(exc).__name__, exc)
            continue
        getattr(mod, adder)(sub)
    return ap


# ------------------------------------------------------------------ subcommand registry
# Subcommands that live in their own modules: (name, module, function adding the parser). To add
# one (train, export, ...), write `add_<name>_parser(sub)` in its module: it calls
# `sub.add_parser(name, help=...)`, adds its options and `set_defaults(func=cmd_<name>)`, where
# cmd_<name>(args) -> int raises CliError / VolumeReadError / WeightsError for user errors.
# info, stats, evaluate, segment, finetune and gui are defined in this file.
EXTRA_COMMANDS = (
    ("train", "engine.train.oasis", "add_train_parser"),
    ("bench", "engine.bench", "add_bench_parser"),
    ("export", "engine.package", "add_export_parser"),
    ("batch", "engine.batch", "add_batch_parser"),
)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (so in-process callers that swap it still see logs)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: bool) -> None:
    """Log to stderr at WARNING (INFO with -v). Installed once, however often main() runs."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _command_of(argv) -> str | None:
    """The subcommand named in argv: its first word that is not an option (the top-level options
    take no values)."""
    return next((a for a in argv if not str(a).startswith("-")), None)


def main(argv=None) -> int:
    """Run one subcommand. 0 on success; 2 and one line on stderr for a user error (bad file,
    bad option, missing weights); 1 and one line for an unexpected failure (-v adds the
    traceback); 130 when interrupted."""
    from engine.core.extras import MissingExtra
    from engine.io.volume import VolumeReadError, VolumeWriteError
    from engine.nets.weights import WeightsError

    verbose = False
    try:
        args = build_parser(_command_of(sys.argv[1:] if argv is None else argv)).parse_args(argv)
        verbose = bool(args.verbose)
        _setup_logging(verbose)
        return int(args.func(args) or 0)
    except (CliError, VolumeReadError, VolumeWriteError, WeightsError, ValueError, OSError, MissingExtra) as exc:
        if verbose and not isinstance(exc, CliError):
            log.error("details", exc_info=True)  # -v: the traceback too
        print(f"brainseg: error: {_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbrainseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if verbose:
            log.error("unexpected error", exc_info=True)
        print(f"brainseg: error: unexpected {type(exc).__name__}: {_error_line(exc)}"
              f"{'' if verbose else ' (run with -v for details)'}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
