"""INT8 post-training quantization of the networks on the CPU (MXNet's oneDNN backend).

`quantize_model(net, calib_slices)` calibrates on a few normalised slices with
`mxnet.contrib.quantization.quantize_net_v2` and returns a quantized `SymbolBlock` that takes the
same (N, 1, H, W) input and gives the same (N, classes, H, W) logits; `label_agreement` compares
its labels with the FP32 network's for reporting.

What quantizes (MXNet 1.9.1, oneDNN): all convolutions (ENet 89) run as INT8 oneDNN
convolutions with their BatchNorm (and the U-Net's ReLU, an `Activation`) folded in, and max
pooling, concat and a few adds and BatchNorms run in INT8. Transposed convolutions, PReLU (ENet's 82), pad,
transpose, UpSampling and broadcast_equal have no INT8 kernels and stay FP32, with a
dequantize/quantize pair around them.

ENet's max-unpooling, mask = (pre_pool == upsample(maxpool(pre_pool))), needs two exclusions:
- Its max-pool stays FP32 (`unpool_mask_layers` finds it in the graph: Pooling -> UpSampling ->
  broadcast_equal, whatever the layers are named). Quantized, the pooled maxima come back on the
  INT8 grid and no longer equal the FP32 values they are compared with, so the mask loses its
  ones. On a small conv/unpool/conv net this halved the INT8 logit error (relative L2 0.39 ->
  0.18); on a phantom-trained ENet label agreement went from 98.4% to 99.0%.
- elemwise_mul (features x mask): quantized_elemwise_mul accepts only int8 inputs, calibration
  sees the 0/1 mask as non-negative and picks uint8, and the graph fails at run time ("data type
  do not match ... Expected: unsigned char v.s. given char").

Calibration: "naive" (min/max). "entropy" (KL) was worse and 20x slower on ENet (96.6% vs 99.1% label
agreement on a phantom-trained ENet). Excluding the first conv or the decoder as well changed the
agreement by less than 0.3 points, so nothing else is excluded by default. Note that INT8 is only
as good as the network is trained: a randomly initialised ENet's INT8 logits are off by ~100%.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from engine.core.mx_env import get_mx
from engine.infer.preprocess import SlicePadding, foreground_mask, normalisation_scale, normalise

log = logging.getLogger(__name__)

EXCLUDED_OPERATORS = ("elemwise_mul",)
CALIB_MODES = ("naive", "entropy")


def calibration_slices(volume: np.ndarray, count: int = 16, margin: int | None = None) -> np.ndarray:
    """Up to `count` normalised axial slices (N, H, W) spread over the foreground of a raw volume,
    cropped to their foreground's in-plane box plus margin (default: inference's), not padded."""
    from engine.infer.preprocess import CROP_MARGIN, foreground_box

    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"calibration needs a 3-D volume, got shape {vol.shape}")
    fg = foreground_mask(vol)
    ks = [k for k in range(vol.shape[2]) if fg[:, :, k].any()]
    if not ks:
        raise ValueError("the calibration volume has no foreground")
    picked = sorted({ks[int(i)] for i in np.linspace(0, len(ks) - 1, min(count, len(ks)))})
    bx, by = foreground_box(fg[:, :, picked], 1, CROP_MARGIN if margin is None else margin)
    return normalise(np.moveaxis(vol[bx, by][:, :, picked], 2, 0), normalisation_scale(vol))


def unpool_mask_layers(net) -> list[str]:
    """Names of the max-pool layers whose output only builds an unpooling mask (see above)."""
    import json

    mx = get_mx()
    nodes = json.loads(net(mx.sym.var("data")).tojson())["nodes"]
    names = []
    for node in nodes:
        if node["op"] != "broadcast_equal":
            continue
        for i in node["inputs"]:
            up = nodes[i[0]]
            if up["op"] == "UpSampling":
                src = nodes[up["inputs"][0][0]]
                if src["op"] == "Pooling":
                    names.append(src["name"])
    return names


def _padded_batch(slices: np.ndarray, multiple: int) -> tuple[np.ndarray, SlicePadding]:
    s = np.asarray(slices, dtype=np.float32)
    if s.ndim != 3 or s.shape[0] == 0:
        raise ValueError(f"expected normalised slices (N, H, W) with N >= 1, got shape {s.shape}")
    pad = SlicePadding.for_shape(s.shape[1:], multiple)
    return pad.pad(s)[:, None], pad


def quantize_model(net, calib_slices: np.ndarray, ctx=None, calib_mode: str = "naive",
                   batch_size: int = 4, exclude_layers_match: tuple[str, ...] = ()):
    """An INT8 SymbolBlock of `net` calibrated on normalised slices (N, H, W).

    The slices are padded centred to the network's multiple. calib_mode "naive" takes each layer's
    min/max over the calibration data; "entropy" minimises the KL divergence instead (slower, and
    worse on ENet). `net` is left hybridized (default flags), as quantize_net_v2 needs.
    The returned block carries `multiple` like the FP32 networks, so Segmenter.from_network works.
    """
    mx = get_mx()
    from mxnet.contrib import quantization as mxq
    from mxnet.contrib.quantization import quantize_net_v2

    if calib_mode == "entropy" and getattr(mxq, "stats", None) is None:
        import scipy.stats  # hidden while mxnet was imported (engine/core/mx_env.py): entropy needs it

        mxq.stats = scipy.stats

    ctx = ctx or mx.cpu()
    if ctx.device_type != "cpu":
        raise ValueError("INT8 quantization runs on the CPU (oneDNN) only")
    if calib_mode not in CALIB_MODES:
        raise ValueError(f"calib_mode must be one of {', '.join(CALIB_MODES)}, not {calib_mode!r}")
    multiple = int(net.multiple)
    x, _ = _padded_batch(calib_slices, multiple)
    bs = max(1, min(batch_size, x.shape[0]))
    calib = mx.io.NDArrayIter(data={"data": mx.nd.array(x, ctx=ctx)}, batch_size=bs,
                              last_batch_handle="pad")
    net.hybridize()
    net(mx.nd.array(x[:1], ctx=ctx))
    with warnings.catch_warnings():  # SymbolBlock: "Cannot decide type for ... data", harmless
        warnings.simplefilter("ignore", UserWarning)
        qnet = quantize_net_v2(net, quantized_dtype="auto", exclude_layers=unpool_mask_layers(net),
                               exclude_layers_match=list(exclude_layers_match),
                               exclude_operators=list(EXCLUDED_OPERATORS), calib_data=calib,
                               calib_mode=calib_mode, num_calib_examples=x.shape[0], ctx=ctx)
    qnet.multiple = multiple
    log.info("quantized %s to INT8 on %d calibration slices (%s)", type(net).__name__, x.shape[0], calib_mode)
    return qnet


def predict_labels(net, slices: np.ndarray, batch_size: int = 8, ctx=None) -> np.ndarray:
    """Labels (N, H, W) uint8 of any network (FP32 or INT8) on normalised slices (N, H, W)."""
    mx = get_mx()
    x, pad = _padded_batch(slices, int(net.multiple))
    out = []
    for i in range(0, x.shape[0], batch_size):
        logits = net(mx.nd.array(x[i:i + batch_size], ctx=ctx or mx.cpu()))
        out.append(mx.nd.argmax(logits, axis=1).asnumpy().astype(np.uint8))
    return pad.unpad(np.concatenate(out))


@dataclass
class Agreement:
    fp32: np.ndarray  # labels (N, H, W) uint8
    int8: np.ndarray
    agreement: float  # fraction of pixels with the same label
    foreground_agreement: float  # the same over pixels either network calls non-background

    def __str__(self) -> str:
        return (f"INT8 vs FP32 labels: {100 * self.agreement:.2f}% of pixels agree, "
                f"{100 * self.foreground_agreement:.2f}% of tissue pixels")


def label_agreement(net, qnet, slices: np.ndarray, batch_size: int = 8) -> Agreement:
    """Run both networks on the same normalised slices and compare their labels."""
    a = predict_labels(net, slices, batch_size)
    b = predict_labels(qnet, slices, batch_size)
    same = a == b
    tissue = (a > 0) | (b > 0)
    fg = float(same[tissue].mean()) if tissue.any() else 1.0
    return Agreement(a, b, float(same.mean()), fg)


# ----------------------------------------------------------------------------- the INT8 cache
CACHE_FORMAT = 1  # bump when what goes into a quantized graph changes
CALIBRATION_SLICES = 16  # demo slices the cached graph is calibrated on (calibration_slices' default)
# Entries kept in the cache folder, the most recently used: the shipped U-Net's graph is about 8 MB,
# and every fine-tuned U-Net version run in INT8 (and every MXNet or code update) adds one.
CACHE_ENTRIES = 6


def _cache_key(info, calib_source: str) -> str:
    """Which model, which calibration, which MXNet and which quantization settings made the graph."""
    import hashlib
    from pathlib import Path

    from engine.infer import preprocess as pre
    from engine.nets.weights import sha256

    mx = get_mx()
    params = info.meta.get("sha256") or sha256(info.params_path)
    # everything that shapes the calibration data and the graph - the weights, the calibration scan,
    # MXNet, the settings, and the code of the preprocessing and of this module - so that a change
    # to any of them gets a new entry instead of an old graph
    code = hashlib.sha256(Path(pre.__file__).read_bytes() + Path(__file__).read_bytes()).hexdigest()
    settings = [CALIBRATION_SLICES, "naive", ",".join(EXCLUDED_OPERATORS), info.arch, sorted(info.arch_kwargs.items())]
    parts = [str(CACHE_FORMAT), params, calib_source, mx.__version__, code, repr(settings)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def quantized_network(net, info, ctx=None):
    """The INT8 network of a model, calibrated on the demo scan - the calibration bench/int8_eval.py
    validated (model.json "int8") - and kept in the start-up cache folder (engine.core.mx_opcache.
    cache_dir, "int8/"), so only the first use pays the quantization (4.3 s for U-Net here; loading
    the cached graph 0.02 s, with the same logits). A missing, corrupt or unwritable cache falls back
    to quantizing; a model changed by a byte, another MXNet or another calibration gets another key."""
    from pathlib import Path

    from engine.core.paths import DEMO_SCAN
    from engine.infer.graph_cache import GraphCache
    from engine.nets.weights import sha256

    mx = get_mx()
    ctx = ctx or mx.cpu()
    cache = GraphCache("int8", log)
    try:
        demo_id = sha256(Path(DEMO_SCAN))
    except OSError:
        demo_id = "missing"
    key = _cache_key(info, f"demo:{demo_id}")
    qnet = cache.load(key, ctx)
    if qnet is not None:
        qnet.multiple = int(net.multiple)
        log.info("INT8 network of %s from the cache (%s)", info.version, key)
        return qnet
    from engine.io.volume import read_volume

    calib = calibration_slices(read_volume(DEMO_SCAN).data, count=CALIBRATION_SLICES)
    qnet = quantize_model(net, calib, ctx)
    try:
        qnet(mx.nd.array(_padded_batch(calib[:1], int(net.multiple))[0], ctx=ctx))  # export needs one forward
    except Exception as exc:  # noqa: BLE001 - as a failed write: this start is not stopped by it
        log.warning("INT8 cache not written (%s): the next start quantizes again", exc)
        return qnet
    cache.store(key, qnet, CACHE_ENTRIES, multiple=int(net.multiple))
    return qnet
