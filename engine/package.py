"""Self-contained inference packages: `brainseg export --format onnx|mxnet [--int8] MODEL -o DIR`.

A package is a folder that segments scans without BrainSeg: numpy + nibabel + onnxruntime (or
mxnet) and the runner script it carries, `python segment_package.py DIR SCAN -o MASK.nii.gz`.
It holds:

- the network: `network.onnx`, or MXNet's `network-symbol.json` + `network-0000.params`;
- the brain extractor (engine/infer/strip.py), unless left out: `strip.onnx`, or `strip-symbol.json`
  + `strip-0000.params`, always FP32 (input (N, 3, H, W): a slice and its two neighbours), with its
  model.json as `strip-model.json`; the runner strips a head with its skull on first (`--strip`);
- `package.json`: backend, precision, input/output layout and the preprocessing as numbers (the
  rules of engine/infer/preprocess.py and engine/infer/inference.py, which the runner re-implements;
  "strip": the extractor's grid, intensity rule, planes and cleanup, engine/infer/strip.py and
  engine/infer/scan.py; "strip_decision": the skull checks of --strip auto, in every package);
- `classes.json` (resources/colors.json) and `model.json` (the model directory's metadata);
- `segment_package.py` (resources/runtime/segment_package.py, imports nothing from BrainSeg);
- `MANIFEST.json`: the SHA-256 of every other file; the runner refuses a package that differs.

ONNX export (mx.onnx.export_model, MXNet 1.9.1 + onnx <= 1.18) with dynamic batch, height and
width. Every op of both networks converts as it is, ENet's included: the channel pad (transpose +
Pad + transpose), slice_axis (-> Slice), zeros_like (-> Shape + ConstantOfShape), concat,
UpSampling nearest (-> Resize), broadcast_equal (-> Equal + Cast), BlockGrad and Dropout
(-> Identity: inference semantics), so engine/nets/enet.py needs no change for export. Two
repairs are made to the converter's graph:
- PReLU: MXNet exports the per-channel slope as shape (C,), which ONNX broadcasts against the
  *last* axis (W); ONNX Runtime rejects it (or, when W == C, computes the wrong thing). The slope
  initializers are reshaped to (C, 1, 1).
- The converter lists every initializer as a graph input too and stamps the model with the
  newest opset onnx knows (23 for onnx 1.18) although it only has translations up to opset 13.
  Inputs are reduced to `data`, the opset set to 13 and the IR version to 7 (what the graph
  really uses, so older ONNX Runtimes load an FP32 package too), the output named `logits`.
Every export is checked: the packaged runner's own loader runs the exported network on two input
sizes and its labels are compared with MXNet's (`package.json` records the result).

INT8 (`--int8`): the MXNet format uses engine.infer.quantize (MXNet's oneDNN quantize_net_v2, naive
calibration); the ONNX format uses onnxruntime.quantization.quantize_static (QDQ, per-channel int8
weights, uint8 activations, MinMax calibration), which needs the ml_dtypes package. Both calibrate
on foreground slices of a scan: the one given, else the bundled demo scan.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.core.mx_env import get_mx, onnx_for_export
from engine.core.paths import DEMO_SCAN, RESOURCES
from engine.core.privacy import scrub
from engine.nets.weights import sha256

log = logging.getLogger(__name__)

FORMATS = ("onnx", "mxnet")
PACKAGE_FORMAT = "brainseg-inference-package"
PACKAGE_VERSION = 1
RUNNER = RESOURCES / "runtime" / "segment_package.py"
MANIFEST = "MANIFEST.json"
INPUT_NAME = "data"  # Gluon's export names the input "data"
OUTPUT_NAME = "logits"
ONNX_OPSET = 13  # the newest opset MXNet 1.9.1's converter has translations for
ONNX_IR_VERSION = 7  # the IR version that goes with opset 13
MIN_AGREEMENT_FP32 = 0.999  # labels of the exported network vs MXNet, on decisive pixels

# engine/infer/preprocess.py and engine/infer/inference.py as numbers (keep in step with them; the package
# tests check the runner against Segmenter).
FOREGROUND_FRACTION = 0.05  # foreground: voxel > 5% of ...
FOREGROUND_PERCENTILE = 99.5  # ... the 99.5th percentile of positive voxels
NORM_PERCENTILE = 99.0  # scale: 99th percentile of foreground voxels
NORM_SUBSAMPLE_ABOVE = 2_000_000  # more foreground voxels than this: every 7th is enough
NORM_SUBSAMPLE_STRIDE = 7
CROP_SCOPE = "batch"  # Segmenter.segment crops each batch to its own foreground box
SKULL_MIN_EDGES = 3  # engine.infer.qc.skull_present: faces touched by a head with its skull on

# engine/infer/strip.py as numbers (the values inside its functions; keep in step: the package tests
# check the runner's brain mask against BrainExtractor's).
STRIP_PREFIX = "strip"  # strip.onnx, or strip-symbol.json + strip-0000.params
STRIP_META = "strip-model.json"  # the extractor's model.json
STRIP_HEAD_FRACTION = 0.08  # head_foreground: voxel > 8% of ...
STRIP_HEAD_PERCENTILE = 99.5  # ... the 99.5th percentile of positive voxels
STRIP_AA_FACTOR = 0.4  # StripGrid.from_scan: anti-aliasing sigma = 0.4 (2 mm / voxel - 1) ...
STRIP_AA_MIN_SIGMA = 0.2  # ... applied when the largest is above this
STRIP_INTENSITY_PERCENTILE = 98.0  # intensity_scale
STRIP_INTENSITY_SUBSAMPLE = 1_000_000
STRIP_CLIP_MAX = 2.0
STRIP_SLICE_FOREGROUND = 0.05  # BrainExtractor.work_probability: slices with work > 0.05 are run
STRIP_BATCH = 16
STRIP_THRESHOLD = 0.5  # clean_mask


def preprocess_spec(multiple: int, arch: str = "enet") -> dict:
    from engine.infer.inference import BEST_BATCH
    from engine.infer.preprocess import CLIP_MAX, CROP_MARGIN

    return {
        "foreground": {"rule": "voxel > fraction * percentile(positive voxels, percentile)",
                       "fraction": FOREGROUND_FRACTION, "percentile": FOREGROUND_PERCENTILE},
        "normalise": {"rule": "clip(voxel / percentile(foreground voxels, percentile), *clip); "
                              "scale 1 when there is no foreground",
                      "percentile": NORM_PERCENTILE, "subsample_above": NORM_SUBSAMPLE_ABOVE,
                      "subsample_stride": NORM_SUBSAMPLE_STRIDE, "clip": [0.0, CLIP_MAX]},
        "empty_slices": "background (slices without foreground are not run)",
        "crop": {"to_foreground": True, "margin": CROP_MARGIN, "scope": CROP_SCOPE,
                 "batch_slices": BEST_BATCH.get(arch, 8),  # as Segmenter batches (crop boxes are per batch)
                 "rule": "in-plane box of the foreground of each batch of batch_slices consecutive "
                         "foreground slices (scope 'batch') or of the whole volume (scope 'volume'), "
                         "plus margin, widened to the multiple"},
        "pad": {"multiple": int(multiple), "placement": "centred", "value": 0.0},
    }


def geometry_spec() -> dict:
    """engine/io/conform.py and the fusion rules of engine/infer/inference.py as numbers, for the runner."""
    from engine.infer.inference import DEFAULT_PLANES, STRIPPED_MAX_ML, STRIPPED_ZERO_FRACTION
    from engine.io.conform import PLANE_AXIS, WORK_CODES, WORK_ZOOM, ZOOM_TOLERANCE

    return {
        "geometry": {"axes": list(WORK_CODES), "voxel_mm": WORK_ZOOM, "tolerance": ZOOM_TOLERANCE,
                     "plane_axis": dict(PLANE_AXIS),
                     "rule": "reorient to the closest LAS orientation; resample linearly (centre-aligned, "
                             "Gaussian anti-aliasing when shrinking > 1.3x) when a voxel side differs from "
                             "voxel_mm by more than tolerance; probabilities back the inverse way, then argmax"},
        "planes": list(DEFAULT_PLANES),
        "fusion": "mean of the planes' softmax probabilities; planes after the first run every "
                  "secondary_stride-th slice, the slices between interpolated linearly along the normal",
        "intensity_refinement": "not applied by this runner: the app and the brainseg CLI re-estimate the "
                                "tissue intensities of skull-stripped whole volumes after the networks "
                                "(engine/labels/tissue_model.py); the runner gives the networks' fused labels",
        "tissue_inside_mask": {"enabled": True, "zero_fraction": STRIPPED_ZERO_FRACTION, "max_ml": STRIPPED_MAX_ML,
                               "rule": "skull-stripped when, over every 2nd voxel along each axis, more than "
                                       "zero_fraction are exactly 0 and the nonzero ones (x8, times the voxel "
                                       "volume) are at most max_ml: then every nonzero voxel gets the most "
                                       "probable tissue class and zero voxels background"},
    }


def strip_decision_spec() -> dict:
    """engine.infer.scan.decide_strip as numbers: whether --strip auto extracts the brain. Recorded
    in every package (one without an extractor still says that a scan has its skull on)."""
    from engine.infer.qc import EDGE_FRACTION
    from engine.io.anatomy import SKULL_ON_FOREGROUND_ML

    return {
        "modes": ["auto", "on", "off"],
        "auto": "extract when skull_present and not skull_stripped",
        "skull_stripped": "the rule of tissue_inside_mask (zero_fraction, max_ml) on the scan as it is",
        "skull_present": {
            "foreground": {"fraction": FOREGROUND_FRACTION, "percentile": FOREGROUND_PERCENTILE},
            "max_ml": SKULL_ON_FOREGROUND_ML, "edge_fraction": EDGE_FRACTION,
            "min_edges": SKULL_MIN_EDGES,
            "rule": "on the scan's own grid: foreground = voxel > fraction * percentile(positive voxels); "
                    "skull present when foreground voxels x voxel volume > max_ml, or when at least min_edges "
                    "of the four faces of the field of view across the left-right and anterior-posterior axes "
                    "(found from the affine) have more than edge_fraction of their voxels in the foreground"},
    }


def strip_spec(info, network: dict) -> dict:
    """engine/infer/strip.py (BrainExtractor.extract) and engine/infer/scan.py (masked_scan) as numbers."""
    from engine.infer.strip import CHANNELS, CONTEXT, FLIP_AXIS, PLANES, STRIP_GRID, STRIP_MM, flip_enabled

    return {
        "model": {"arch": info.arch, "arch_kwargs": info.arch_kwargs, "version": info.version,
                  "metadata": STRIP_META},
        "precision": "fp32",
        "network": network,
        "grid": {"size": STRIP_GRID, "voxel_mm": STRIP_MM, "axes": "RAS",
                 "centre": {"step": 2, "fraction": STRIP_HEAD_FRACTION, "percentile": STRIP_HEAD_PERCENTILE,
                            "rule": "head = every step-th voxel of the scan (along each axis) > fraction * "
                                    "percentile(positive voxels of every (2 x step)-th voxel); the grid is centred "
                                    "(world mm, from the affine) on the middle of the head's voxel box, (first + "
                                    "last) / 2 in scan voxels; the scan's centre when no voxel is head"},
                 "affine": "diag(voxel_mm, voxel_mm, voxel_mm, 1), translation centre - voxel_mm * (size - 1) / 2",
                 "anti_alias": {"factor": STRIP_AA_FACTOR, "min_sigma": STRIP_AA_MIN_SIGMA,
                                "rule": "sigma per scan axis = max(0, factor * (voxel_mm / voxel side - 1)); when "
                                        "the largest is above min_sigma, a Gaussian filter (truncated at 4 sigma, "
                                        "mirrored edges) smooths the scan first"},
                 "interpolation": "trilinear at work voxel -> world -> scan voxel (inverse affines); points "
                                  "outside the scan's first and last voxel centres are 0 (scipy.ndimage."
                                  "affine_transform order 1, mode constant)"},
        "intensity": {"percentile": STRIP_INTENSITY_PERCENTILE, "subsample_above": STRIP_INTENSITY_SUBSAMPLE,
                      "clip": [0.0, STRIP_CLIP_MAX],
                      "rule": "work / percentile(positive work-grid voxels), clipped; more than subsample_above "
                              "positive voxels: every (n // subsample_above + 1)-th; scale 1 when none or 0"},
        "slices": {"context": CONTEXT, "channels": CHANNELS, "plane_axis": dict(PLANES),
                   "layout": "a plane's slice k is the work grid at index k along plane_axis, its other two "
                             "axes in order; channels are slices k - context .. k + context (clamped at the "
                             "grid's edges)",
                   "foreground": STRIP_SLICE_FOREGROUND, "batch_slices": STRIP_BATCH,
                   "skip": "slices with no work voxel > foreground get probability 0"},
        "fusion": "brain probability = softmax(logits)[:, 1]; the mean over the three planes",
        "flip": ({"axis": FLIP_AXIS, "rule": "the fused probability of the work grid and that of the grid "
                                              "mirrored along axis (then mirrored back), averaged"}
                 if flip_enabled(info.meta) else None),
        "back": "the probability resampled trilinearly onto the scan's grid (0 outside the work grid)",
        "threshold": float(info.meta.get("threshold", STRIP_THRESHOLD)),
        "fill_enclosed": "on the work grid, before going back: the largest 6-connected piece of probability > "
                         "threshold, its holes filled in 3-D and then in every slice of each axis in turn "
                         "(scipy.ndimage.binary_fill_holes); voxels so filled get probability 1 "
                         "(engine.infer.strip.fill_enclosed)",
        "cleanup": "keep the largest 6-connected piece of probability > threshold, then fill its holes "
                   "(scipy.ndimage.label and binary_fill_holes, default structures)",
        "masking": "outside the mask 0; inside max(voxel, 0), raised to at least 0.001 x the largest such voxel "
                   "in the mask, so nonzero = the mask (engine.infer.scan.masked_scan); then segmented as a "
                   "skull-stripped scan",
        "decision": "strip_decision",
    }


def resolve_strip_model(strip_model: str | os.PathLike | None = None, include: bool = True) -> Path | None:
    """The extractor's model directory a package carries: none with include False, `strip_model`
    when given, else the shipped one when its weights are installed (else none)."""
    from engine.nets.weights import META, read_model_dir, shipped_model_dir

    if not include:
        if strip_model is not None:
            raise ValueError("--strip-model and --no-strip: choose one")
        return None
    if strip_model is not None:
        read_model_dir(strip_model, verify=False)  # WeightsError: one line for the CLI
        return Path(strip_model)
    shipped = shipped_model_dir("strip")
    if (shipped / META).is_file():
        return shipped
    log.info("no brain extractor installed (%s): the package will not carry one", shipped)
    return None


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """A model directory, or "unet"/"enet" for the active version of that architecture."""
    from engine.nets import MODEL_NAMES

    path = Path(model)
    if path.is_dir():
        return path
    if str(model).lower() in MODEL_NAMES:
        from engine.store.versions import ModelStore

        return ModelStore().active_dir(str(model).lower())
    raise ValueError(f"{model}: not a model directory, nor one of {', '.join(MODEL_NAMES)}")


def write_manifest(pkg: Path) -> dict:
    files = {p.relative_to(pkg).as_posix(): sha256(p)
             for p in sorted(pkg.rglob("*")) if p.is_file() and p.name != MANIFEST}
    manifest = {"format": PACKAGE_FORMAT, "algorithm": "sha256", "files": files}
    (pkg / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def load_runner(path: Path = RUNNER):
    """The runner script as a module (the check at export uses the packaged copy's own code)."""
    spec = importlib.util.spec_from_file_location(f"_brainseg_runner_{abs(hash(str(path)))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def verify_package(pkg: str | os.PathLike) -> dict:
    """Check a package's checksums with this installation's runner code (not the package's own
    copy, which could have been altered too); returns package.json. Raises ValueError."""
    runner = load_runner(RUNNER)
    try:
        return runner.load_package(Path(pkg))
    except runner.PackageError as exc:
        raise ValueError(str(exc)) from exc


# ----------------------------------------------------------------------------- network export
def export_symbol(net, prefix: Path, hw: tuple[int, int], channels: int = 1) -> tuple[Path, Path]:
    """Hybridize, run once at (1, channels, *hw) and write MXNet's symbol JSON + params."""
    mx = get_mx()
    net.hybridize()
    net(mx.nd.zeros((1, channels) + tuple(hw)))
    net.export(str(prefix), epoch=0)
    return Path(f"{prefix}-symbol.json"), Path(f"{prefix}-0000.params")


def repair_onnx(model):
    """Make mx.onnx's graph loadable by ONNX Runtime (see the module docstring)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.op_type)
    for node in graph.node:
        if node.op_type != "PRelu" or node.input[1] not in inits:
            continue
        slope = inits[node.input[1]]
        if len(slope.dims) != 1:
            continue
        if users[slope.name] != {"PRelu"}:
            raise RuntimeError(f"PReLU slope {slope.name} is shared with other operators")
        arr = numpy_helper.to_array(slope).reshape((-1, 1, 1))
        slope.CopyFrom(numpy_helper.from_array(arr, slope.name))
    kept = [i for i in graph.input if i.name not in inits]
    del graph.input[:]
    graph.input.extend(kept)
    old_out = graph.output[0].name  # name the output and the dynamic axes for readers of the file
    for node in graph.node:
        node.input[:] = [OUTPUT_NAME if i == old_out else i for i in node.input]
        node.output[:] = [OUTPUT_NAME if o == old_out else o for o in node.output]
    graph.output[0].name = OUTPUT_NAME
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        for i, label in ((0, "batch"), (2, "height"), (3, "width")):
            if len(dims) == 4 and not dims[i].HasField("dim_value"):
                dims[i].dim_param = label
    del model.opset_import[:]
    model.opset_import.add(domain="", version=ONNX_OPSET)
    model.ir_version = ONNX_IR_VERSION
    return model


def _copy_scrubbed(src: Path, dst: Path) -> None:
    """A model.json copied into a package without home paths or file names (engine/core/privacy.py)."""
    meta = json.loads(src.read_text(encoding="utf-8"))
    dst.write_text(json.dumps(scrub(meta), indent=2), encoding="utf-8")


def export_onnx(net, path: Path, hw: tuple[int, int], meta: dict | None = None, channels: int = 1) -> Path:
    """FP32 ONNX of a Gluon network with dynamic batch, height and width (input (N, channels, H, W))."""
    from engine.core.extras import need

    onnx = need("onnx", "ONNX export")
    need("onnxruntime", "ONNX export")

    mx = get_mx()
    onnx_for_export()
    with tempfile.TemporaryDirectory() as tmp:
        sym, params = export_symbol(net, Path(tmp) / "net", hw, channels)
        raw = Path(tmp) / "raw.onnx"
        mx.onnx.export_model(str(sym), str(params), in_shapes=[(1, channels) + tuple(hw)], in_types=[np.float32],
                             onnx_file_path=str(raw), dynamic=True,
                             dynamic_input_shapes=[(None, channels, None, None)])
        model = repair_onnx(onnx.load(str(raw)))
    model.producer_name = "BrainSeg"
    for key, value in (meta or {}).items():
        model.metadata_props.add(key=key, value=str(value))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def quantize_onnx(src: Path, dst: Path, calib: np.ndarray) -> Path:
    """INT8 (QDQ) copy of an FP32 ONNX network, calibrated on padded slices (N, 1, H, W)."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ValueError(f"ONNX INT8 needs onnxruntime.quantization, which failed to import ({exc}); "
                         "install ml_dtypes, or use --format mxnet --int8") from exc

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{INPUT_NAME: calib[i:i + 1]} for i in range(calib.shape[0])])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)  # folds BatchNorm into Conv
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    return dst


# ----------------------------------------------------------------------------- checks
def _check_inputs(multiple: int, calib: np.ndarray | None) -> list[np.ndarray]:
    """Two batches of different sizes: proves the dynamic height/width of the export."""
    rng = np.random.default_rng(1984)
    m = multiple
    out = [rng.uniform(0, 1.5, (2, 1, 6 * m, 5 * m)).astype(np.float32),
           rng.uniform(0, 1.5, (1, 1, 4 * m, 7 * m)).astype(np.float32)]
    if calib is not None:
        out.insert(0, calib[:4])
    return out


def _strip_check_inputs() -> list[np.ndarray]:
    """The extractor's work-grid slices (N, 3, 128, 128), and a smaller size (its dynamic axes)."""
    from engine.infer.strip import CHANNELS, STRIP_GRID

    rng = np.random.default_rng(1985)
    return [rng.uniform(0, STRIP_CLIP_MAX, (2, CHANNELS, STRIP_GRID, STRIP_GRID)).astype(np.float32),
            rng.uniform(0, STRIP_CLIP_MAX, (1, CHANNELS, STRIP_GRID // 2, 3 * STRIP_GRID // 4)).astype(np.float32)]


def export_strip_network(net, info, out: Path, fmt: str) -> dict:
    """The brain extractor in the package's format (FP32; input (N, 3, H, W), traced at 128 x 128);
    returns its package.json "network" entry."""
    from engine.infer.strip import CHANNELS, STRIP_GRID

    hw = (STRIP_GRID, STRIP_GRID)
    spec = {"input": INPUT_NAME, "layout": "NCHW", "channels": CHANNELS, "dtype": "float32",
            "dynamic_axes": ["batch", "height", "width"],
            "output": "logits (N, 2, H, W); brain probability = softmax over axis 1, class 1"}
    if fmt == "onnx":
        meta = {"arch": info.arch, "version": info.version, "role": "brain extraction"}
        export_onnx(net, out / f"{STRIP_PREFIX}.onnx", hw, meta, channels=CHANNELS)
        spec["files"] = {"onnx": f"{STRIP_PREFIX}.onnx"}
        spec["opset"] = ONNX_OPSET
    else:
        export_symbol(net, out / STRIP_PREFIX, hw, CHANNELS)
        spec["files"] = {"symbol": f"{STRIP_PREFIX}-symbol.json", "params": f"{STRIP_PREFIX}-0000.params"}
        spec["mxnet"] = get_mx().__version__
    return spec


def compare_logits(ref: np.ndarray, out: np.ndarray, margin: float = 1e-3) -> dict:
    """Labels agreement of two logit arrays (N, C, H, W), overall and where ref's top-2 gap > margin."""
    top2 = np.sort(ref, axis=1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > margin
    same = ref.argmax(1) == out.argmax(1)
    return {"label_agreement": float(same.mean()),
            "decisive_label_agreement": float(same[decisive].mean()) if decisive.any() else 1.0,
            "max_abs_logit_diff": float(np.abs(ref - out).max()),
            "max_abs_logit": float(np.abs(ref).max())}


def check_package_network(pkg: Path, spec: dict, net, inputs: list[np.ndarray], part: str = "network") -> list[dict]:
    """Run the packaged network (`part`: "network", the tissue one, or "strip", the extractor)
    through the runner's own loader and compare it with `net`, one result per input batch."""
    mx = get_mx()
    run = load_runner(pkg / "segment_package.py").load_network(pkg, spec, part)
    results = []
    for x in inputs:
        r = net(mx.nd.array(x)).asnumpy()
        o = np.asarray(run(x))
        if o.shape != r.shape:
            raise RuntimeError(f"the exported network gives shape {o.shape} for input {x.shape}, MXNet {r.shape}")
        results.append({"input_shape": list(x.shape), **compare_logits(r, o)})
    return results


# ----------------------------------------------------------------------------- the package
def _calibration(calib_volume, multiple: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(normalised slices (N, H, W), padded batch (N, 1, PH, PW), description)."""
    from engine.infer.preprocess import SlicePadding
    from engine.infer.quantize import calibration_slices

    if calib_volume is None:
        if not DEMO_SCAN.exists():
            raise ValueError("INT8 export needs a calibration scan (--calib SCAN)")
        calib_volume = DEMO_SCAN
    if isinstance(calib_volume, (str, os.PathLike)):
        from engine.core.privacy import name_fingerprint
        from engine.io.volume import read_volume

        source = name_fingerprint(str(calib_volume))  # never the scan's name in a package (issue #20)
        volume = read_volume(calib_volume, kind="image").data
    else:
        source, volume = "array", calib_volume
    slices = calibration_slices(volume)
    pad = SlicePadding.for_shape(slices.shape[1:], multiple)
    return slices, pad.pad(slices)[:, None], source


def _prepare_out_dir(out_dir: Path) -> Path:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a package is meant to be shared
    return tmp


def _secondary_note(model_dir: Path) -> dict | None:
    """package.json's note on the model's secondary planes' network (engine.infer.inference), or None."""
    from engine.infer.inference import secondary_folder
    from engine.nets.weights import WeightsError, read_model_dir

    d = secondary_folder(model_dir)
    if d is None:
        return None
    log.info("%s: the package runs the model's own network in every plane (its secondary planes' network "
             "is not carried)", model_dir)
    try:
        version = read_model_dir(d, verify=False).version
    except WeightsError as exc:  # not carried: an unreadable one must not stop the export
        version = f"unreadable ({exc})"
    return {"carried": False, "version": version,
            "note": "the app runs the planes after the first with this smaller network, distilled from the "
                    "model; this package runs the model's own network in every plane: slower, and a few "
                    "labels differ from the app's"}


def export_package(model_dir: str | os.PathLike, out_dir: str | os.PathLike, fmt: str = "onnx",
                   int8: bool = False, calib_volume=None, strip_model: str | os.PathLike | None = None,
                   include_strip: bool = True) -> Path:
    """Write a self-contained inference package of a model directory; returns out_dir.

    calib_volume (INT8 only): a raw scan as an array or a file path; default the demo scan.
    The brain extractor goes in too (FP32, the same format; see resolve_strip_model): `strip_model`,
    else the shipped one when installed; include_strip False leaves it out.
    The folder is built beside out_dir and renamed into place, so a failed export leaves nothing.
    """
    from engine import __version__
    from engine.infer.inference import SECONDARY_STRIDE, load_network
    from engine.nets.weights import META

    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown package format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if not RUNNER.exists():
        raise OSError(f"{RUNNER}: the runner script is missing from this installation")
    t0 = time.time()
    mx = get_mx()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    net, info = load_network(model_dir, mx.cpu())
    strip_dir = resolve_strip_model(strip_model, include_strip)
    strip_net, strip_info = load_network(strip_dir, mx.cpu()) if strip_dir is not None else (None, None)
    multiple = int(net.multiple)
    hw = (8 * multiple, 8 * multiple) if multiple < 16 else (4 * multiple, 4 * multiple)
    calib = calib_batch = None
    calib_source = None
    if int8:
        calib, calib_batch, calib_source = _calibration(calib_volume, multiple)
    classes = json.loads((RESOURCES / "colors.json").read_text(encoding="utf-8"))["classes"]
    spec = {
        "format": PACKAGE_FORMAT, "package_version": PACKAGE_VERSION, "backend": fmt,
        "precision": "int8" if int8 else "fp32",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"arch": info.arch, "arch_kwargs": info.arch_kwargs, "version": info.version,
                  "multiple": multiple, "classes": len(classes)},
        "network": {"input": INPUT_NAME, "layout": "NCHW", "channels": 1, "dtype": "float32",
                    "dynamic_axes": ["batch", "height", "width"],
                    "output": "logits (N, classes, H, W); label = argmax over axis 1"},
        "preprocess": preprocess_spec(multiple, info.arch),
        **geometry_spec(),
        "secondary_stride": SECONDARY_STRIDE.get(info.arch, 1),
        # the model's calibration (model.json; engine.infer.inference.Segmenter._calibrate)
        "calibration": ({"class_weights": list(info.class_weights),
                         "rule": "the fused class probabilities on the scan's grid are multiplied by "
                                 "class_weights (one per class, in the classes' order) before the argmax"}
                        if info.class_weights else None),
        "classes": classes,
        "strip_decision": strip_decision_spec(),
        # the app's smaller network for the planes after the first stays out: the runner runs this
        # network in every plane (slower, and a few labels differ from the app's)
        "secondary_network": _secondary_note(model_dir),
        "strip": None,  # the brain extractor, when the package carries one (strip_spec)
        "brainseg_version": __version__,
    }
    tmp = _prepare_out_dir(out_dir)
    try:
        if fmt == "onnx":
            meta = {"arch": info.arch, "version": info.version, "multiple": multiple}
            fp32 = export_onnx(net, tmp / "network.onnx", hw, meta)
            if int8:
                import onnx

                os.replace(quantize_onnx(fp32, tmp / "network.int8.onnx", calib_batch), fp32)
                spec["quantization"] = {"tool": "onnxruntime.quantization.quantize_static",
                                        "format": "QDQ", "weights": "int8 per channel",
                                        "activations": "uint8", "calibration": "MinMax"}
                opset = max(o.version for o in onnx.load(str(fp32)).opset_import if o.domain in ("", "ai.onnx"))
            else:
                opset = ONNX_OPSET
            spec["network"]["files"] = {"onnx": "network.onnx"}
            spec["network"]["opset"] = opset
        else:
            if int8:
                from engine.infer.quantize import quantize_model

                qnet = quantize_model(net, calib)
                spec["quantization"] = {
                    "tool": "mxnet.contrib.quantization.quantize_net_v2 (oneDNN), see engine/infer/quantize.py",
                    "calibration": "naive (min/max)",
                    "int8": "convolutions (with BatchNorm and residual adds fused), max pooling, concat",
                    "fp32": "PReLU, relu, transposed convolutions, pad, transpose, UpSampling, "
                            "the unpooling mask (its max pooling, comparison and multiply)"}
                qnet(mx.nd.zeros((1, 1) + hw))
                qnet.export(str(tmp / "network"), epoch=0)
            else:
                export_symbol(net, tmp / "network", hw)
            spec["network"]["files"] = {"symbol": "network-symbol.json", "params": "network-0000.params"}
            spec["network"]["mxnet"] = mx.__version__
        if int8:
            spec["quantization"]["calibration_scan"] = calib_source
            spec["quantization"]["calibration_slices"] = int(calib.shape[0])
        if strip_net is not None:  # FP32 whatever --int8 says
            spec["strip"] = strip_spec(strip_info, export_strip_network(strip_net, strip_info, tmp, fmt))
            _copy_scrubbed(strip_dir / META, tmp / STRIP_META)
        shutil.copyfile(RUNNER, tmp / "segment_package.py")
        shutil.copyfile(RESOURCES / "colors.json", tmp / "classes.json")
        _copy_scrubbed(model_dir / META, tmp / "model.json")
        (tmp / "package.json").write_text(json.dumps(spec, indent=2, default=str), encoding="utf-8")
        # Check the packaged network with the runner's loader against the FP32 network.
        checks = check_package_network(tmp, spec, net, _check_inputs(multiple, calib_batch))
        log.info("export check (%s %s): %s", fmt, spec["precision"], checks)
        worst = min(c["decisive_label_agreement"] for c in checks)
        if not int8 and worst < MIN_AGREEMENT_FP32:
            raise RuntimeError(f"the exported {fmt} network disagrees with MXNet: {checks}")
        spec["export_check"] = {"against": "the FP32 network in MXNet",
                                "label_agreement": min(c["label_agreement"] for c in checks),
                                "max_abs_logit_diff": max(c["max_abs_logit_diff"] for c in checks),
                                "inputs": checks}
        if int8:  # the first check input is calibration slices: real data, unlike the random ones
            spec["quantization"]["label_agreement_on_calibration_slices"] = checks[0]["label_agreement"]
            if checks[0]["label_agreement"] < 0.95:
                log.warning("INT8 %s keeps only %.1f%% of the FP32 labels on the calibration slices",
                            fmt, 100 * checks[0]["label_agreement"])
        if strip_net is not None:
            checks = check_package_network(tmp, spec, strip_net, _strip_check_inputs(), "strip")
            log.info("export check (%s extractor): %s", fmt, checks)
            if min(c["decisive_label_agreement"] for c in checks) < MIN_AGREEMENT_FP32:
                raise RuntimeError(f"the exported {fmt} brain extractor disagrees with MXNet: {checks}")
            spec["strip"]["export_check"] = {"against": "the extractor in MXNet",
                                             "label_agreement": min(c["label_agreement"] for c in checks),
                                             "max_abs_logit_diff": max(c["max_abs_logit_diff"] for c in checks),
                                             "inputs": checks}
        (tmp / "package.json").write_text(json.dumps(spec, indent=2, default=str), encoding="utf-8")
        write_manifest(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (%s, %s) to %s in %.1f s", info.version, fmt, spec["precision"], out_dir,
             time.time() - t0)
    return out_dir


# ----------------------------------------------------------------------------- command line
def cmd_export(args) -> int:
    from engine.core.mx_env import configure_threads

    configure_threads()
    model_dir = resolve_model_dir(args.model)
    out = export_package(model_dir, args.output, fmt=args.format, int8=args.int8, calib_volume=args.calib,
                         strip_model=args.strip_model, include_strip=not args.no_strip)
    spec = json.loads((out / "package.json").read_text(encoding="utf-8"))
    chk = spec["export_check"]
    print(f"exported {spec['model']['arch']} ({spec['model']['version']}) as {spec['backend']} "
          f"{spec['precision']} to {out}")
    if "quantization" in spec:
        q = spec["quantization"]
        print(f"INT8 vs FP32 on {q['calibration_slices']} calibration slices of {q['calibration_scan']}: "
              f"{100 * q['label_agreement_on_calibration_slices']:.2f}% of labels agree")
    else:
        print(f"check against MXNet: {100 * chk['label_agreement']:.2f}% of labels agree, "
              f"max logit difference {chk['max_abs_logit_diff']:.3g}")
    if spec.get("strip"):
        s = spec["strip"]
        print(f"with the brain extractor ({s['model']['version']}, {spec['backend']} fp32; check against MXNet: "
              f"{100 * s['export_check']['label_agreement']:.2f}% of labels agree): heads with their skull on "
              "are stripped first (--strip auto|on|off)")
    else:
        print("without a brain extractor: the runner segments every scan as it is (a head with its skull on "
              "needs stripping first)")
    print(f"run it: python {out / 'segment_package.py'} {out} SCAN -o MASK.nii.gz")
    return 0


def add_export_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a self-contained inference package (ONNX or MXNet)")
    p.add_argument("model", metavar="MODEL", help='a model directory, or "unet"/"enet" for the active version')
    p.add_argument("-o", "--output", required=True, help="package folder to create (must not exist or be empty)")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="network format (default: onnx)")
    p.add_argument("--int8", action="store_true", help="post-training INT8 quantization (CPU)")
    p.add_argument("--calib", metavar="SCAN", help="scan to calibrate INT8 on (default: the demo scan)")
    p.add_argument("--strip-model", metavar="DIR",
                   help="brain extractor model directory to carry (default: the shipped one, when installed)")
    p.add_argument("--no-strip", action="store_true",
                   help="leave the brain extractor out (the package then needs skull-stripped scans)")
    p.set_defaults(func=cmd_export)
