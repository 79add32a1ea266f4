"""Whole-volume segmentation, slice by slice along the third (axial) array axis, in batches.

A `Segmenter` owns one loaded network. `segment()` takes a numpy volume and gives back a uint8
label map on the same grid (and optionally the per-voxel softmax entropy as an uncertainty map),
reporting progress through a callback and stopping when a cancel token is set. It never touches a
widget; the GUI calls it from its engine thread.

Speed: slices with no foreground are labelled background without running the network, and each
batch of consecutive slices runs on the in-plane bounding box of its foreground (plus a margin,
rounded up to the network's multiple) rather than the full slice: on the demo scan that is 63% of
the full-slice work. Outside a skull-stripped brain the scan is zero, so the network sees the same
input either way, but deep layers see BatchNorm's response to background differently from zero
padding: on the demo scan 99.45% of brain voxels get the same label as full-slice inference, and
Dice against the reference is unchanged (U-Net: CSF/GM/WM 0.908/0.958/0.950 cropped vs
0.908/0.958/0.950 full).
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engine.core.cancel import Cancelled, CancelToken
from engine.core.classes import NUM_CLASSES
from engine.core.mx_env import default_context, get_mx
from engine.infer.helper import ANSWER_TIMEOUT_S, FLIP, SECONDARY, HelperError
from engine.infer.preprocess import (
    SlicePadding,
    foreground_box,
    foreground_mask,
    foreground_threshold,
    normalisation_scale,
    normalise,
)
from engine.io.anatomy import STRIPPED_MAX_ML, STRIPPED_ZERO_FRACTION, skull_stripped  # noqa: F401 (re-exported)
from engine.io.conform import PLANE_AXIS, Conform
from engine.nets import count_parameters
from engine.nets.weights import ModelInfo, WeightsError, read_model_dir, shipped_model_dir

log = logging.getLogger(__name__)

# Whole-volume time on 2 cores by batch size, fused oneDNN graphs, after the first volume
# (2026-11-24): U-Net 7.3 s at 2, 7.5 s at 4, 7.8 s at 8, 8.3 s at 16; ENet 2.1 s at 4, 1.4 s at 8,
# 1.35 s at 16, 1.5 s at 32.
BEST_BATCH = {"unet": 2, "enet": 16}
HELPER_LOOKAHEAD = 4  # results held for the in-order sum while the helper computes an earlier batch
DEFAULT_PLANES = ("axial", "coronal", "sagittal")
# every 3rd coronal and sagittal slice: 2.1x the single-plane time for about three quarters of the
# full fusion's gain on the REPORT proxies (docs/BENCHMARKS.md, "Choosing the defaults")
SECONDARY_STRIDE = {"unet": 3, "enet": 3}


@dataclass
class SegmentConfig:
    batch_size: int | None = None  # None: the fastest measured for the network (BEST_BATCH)
    crop_to_foreground: bool = True
    uncertainty: bool = False
    # Only these slices of `slice_plane`, as indices along the scan's own array axis normal to that
    # anatomical plane (others left 0). A slice run is always a single pass in that plane.
    slices: tuple[int, ...] | None = None
    slice_plane: str = "axial"
    # Anatomical planes whose class probabilities are averaged (FastSurfer/QuickNAT view
    # aggregation). ("axial",) is the single-plane pass.
    planes: tuple[str, ...] = DEFAULT_PLANES
    # FSL_SEG semantics: in a skull-stripped scan every nonzero voxel is CSF, grey or white matter.
    tissue_inside_mask: bool = True
    # the nonzero voxels ARE the brain mask (engine.infer.scan masked the scan with an extracted
    # or corrected mask): FSL_SEG semantics whatever the skull-stripped check says of its size
    masked: bool = False
    # Whole skull-stripped volumes: re-estimate this scan's tissue intensities (bias field, then a
    # Gaussian per tissue) with the fused probabilities as the prior (tissue_model.refine_with_
    # intensities). Off by default: on the REPORT proxies it cost the three-plane networks
    # 0.02-0.03 CSF and GM Dice on the MPRAGE-like copy (docs/BENCHMARKS.md).
    refine: bool = False
    # test-time augmentation: axial and coronal slices are also run mirrored left-right and the
    # probabilities averaged (twice the work in those planes). Off by default: see BENCHMARKS.md.
    flip: bool = False
    # planes after the first run every n-th slice only; the slices between are interpolated
    # linearly along the plane's normal (sparse view aggregation: 1 + 2/n passes instead of 3).
    # None: the network's default (SECONDARY_STRIDE, chosen from docs/BENCHMARKS.md)
    secondary_stride: int | None = None
    # the planes after the first run by the model's secondary planes' network when its folder has
    # one (SECONDARY_DIR: a smaller network distilled from it, for speed); False: its own network
    secondary_network: bool = True
    return_probabilities: bool = False


@dataclass
class SegmentResult:
    labels: np.ndarray  # uint8, volume shape
    uncertainty: np.ndarray | None  # float32 entropy in nats, volume shape, or None
    seconds: float
    model: str
    slices_run: int
    geometry: str = ""  # what was done to bring the scan to the network (Conform.describe), or ""
    planes: tuple[str, ...] = ("axial",)
    probabilities: np.ndarray | None = None  # (4, *shape) float32 when asked for
    # with uncertainty: the probability that each voxel's label is wrong, 1 - p(chosen class)
    # (float16; 0 outside the brain): summed over a slice it is the expected number of wrong voxels
    p_wrong: np.ndarray | None = None


GRAPH_CACHE_FORMAT = 1  # bump when what goes into a cached fused graph changes
# FP32 entries kept: ENet's is 2 MB, the U-Net's about 30 MB; each fine-tuned version adds one
GRAPH_CACHE_ENTRIES = 6


def _onednn(ctx) -> bool:
    """MXNet's oneDNN subgraph backend fuses this context's graphs (a CPU build with MKLDNN, not
    switched off with MXNET_MKLDNN_ENABLED=0)."""
    import os

    return (ctx.device_type == "cpu" and get_mx().runtime.Features().is_enabled("MKLDNN")
            and os.environ.get("MXNET_MKLDNN_ENABLED", "1") != "0")


@functools.lru_cache(maxsize=1)
def _graph_code_digest() -> str:
    """SHA-256 of the code that builds a fused graph (the networks, this module, the cache's), read
    once per process: the Segmenter and the brain extractor both need it."""
    import hashlib

    import engine.infer.graph_cache as graph_cache
    import engine.nets as nets

    code = hashlib.sha256()
    for f in [*sorted(Path(nets.__file__).parent.glob("*.py")), Path(__file__), Path(graph_cache.__file__)]:
        code.update(f.read_bytes())
    return code.hexdigest()


def _fused_graph_key(info: ModelInfo) -> str:
    """What makes a model's fused FP32 graph: its weights (model.json's checksum, which read_model_dir
    verified, else the file's), its architecture, the MXNet build and its oneDNN switches
    (MXNET_*MKLDNN* variables change what the backend fuses), and the code that builds the graph -
    the networks (their definitions and ENet's fuse_for_inference), this module (the partitioning
    call) and the cache's own - so that a change to any of them gets a new entry."""
    import hashlib
    import os

    from engine.core.mx_opcache import mxnet_build
    from engine.nets.weights import sha256

    switches = sorted((k, v) for k, v in os.environ.items() if k.startswith("MXNET_") and "MKLDNN" in k)
    parts = [str(GRAPH_CACHE_FORMAT), info.meta.get("sha256") or sha256(info.params_path), info.arch,
             repr(sorted(info.arch_kwargs.items())), get_mx().__version__, mxnet_build(), repr(switches),
             _graph_code_digest()]
    return "fp32-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def load_network(model_dir: str | Path, ctx=None, info: ModelInfo | None = None):
    """Build the network described by a model directory and load its parameters (`info`: the
    directory's record when the caller has just read and verified it)."""
    from engine.nets import get_model

    get_mx()
    info = info or read_model_dir(model_dir)
    net = get_model(info.arch, **info.arch_kwargs)
    ctx = ctx or default_context()
    net.load_parameters(str(info.params_path), ctx=ctx)
    return net, info


def fused_network(model_dir: str | Path, ctx, in_channels: int = 1):
    """(net, info): the model's FP32 network as MXNet's oneDNN subgraph pass fuses it for inference
    (conv + BatchNorm + activation (+ add); ENet first rewritten by its fuse_for_inference), from
    the graph cache (engine/infer/graph_cache.py, "fp32/") when a start before this one made it,
    else built, partitioned on a small input of `in_channels` channels and cached. `net.multiple`
    and `net.parameter_count` (of the network as trained) are set either way. None on a context
    without oneDNN. Used by the Segmenter and the brain extractor."""
    from engine.infer.graph_cache import GraphCache

    if not _onednn(ctx):
        return None
    info = read_model_dir(model_dir)
    key = _fused_graph_key(info)
    cache = GraphCache("fp32", log)
    net = cache.load(key, ctx)
    if net is not None and hasattr(net, "multiple") and hasattr(net, "parameter_count"):
        net.hybridize(static_alloc=True, static_shape=True)  # (already partitioned: no backend pass)
        log.info("fused %s network of %s from the cache (%s)", info.arch, info.version, key)
        return net, info
    mx = get_mx()
    net, info = load_network(model_dir, ctx, info)
    count = count_parameters(net)  # before the rewrite
    fuse = getattr(net, "fuse_for_inference", None)
    if fuse is not None:
        fuse()
    m = int(net.multiple)
    # the same partitioning as hybridize(backend="MKLDNN") does at the first call, done now so that
    # the partitioned graph can be exported for the next start
    net.optimize_for(mx.nd.zeros((1, in_channels, 4 * m, 4 * m), ctx=ctx), backend="MKLDNN",
                     static_alloc=True, static_shape=True)
    cache.store(key, net, GRAPH_CACHE_ENTRIES, multiple=m, parameter_count=count)
    net.parameter_count = count
    return net, info


SECONDARY_DIR = "secondary"  # in a model folder: the network for the planes after the first (below)
SECONDARY_PLANES = ("coronal", "sagittal")  # the planes it was trained on and may run


def secondary_folder(model_dir: str | Path) -> Path | None:
    """The model folder's secondary planes' network folder (SECONDARY_DIR), or None without one."""
    d = Path(model_dir) / SECONDARY_DIR
    return d if (d / "model.json").exists() else None


def _prepare_network(net, hybridize: bool):
    """A loaded network made ready for inference where fused_network could not: ENet rewritten into
    the same function in fast operators (ENet.fuse_for_inference; its PReLUs are as slow
    imperatively), hybridized with static buffers unless in low-memory mode."""
    fuse = getattr(net, "fuse_for_inference", None)
    if fuse is not None:
        fuse()
    if hybridize:
        net.hybridize(static_alloc=True)
    return net


class Segmenter:
    """A loaded model ready to segment volumes. Not thread-safe: use from one thread.

    A model folder may hold a `secondary/` model folder: a smaller network of the same kind,
    distilled from this one, which then runs the coronal and sagittal planes of a fused pass when
    they are not its first plane (the first plane is always the model's own), for speed (tools/train_shipped.py --planes secondary --teacher; docs/BENCHMARKS.md).
    No shipped model has one (a trained candidate: resources/weights/candidates/): a fine-tuned
    version never does, so the user's corrections reach every plane. Its model.json version names it, so tables and reports say which ran. Its
    model.json may carry its own `calibration.class_weights`: those of the fused pass it takes part
    in (the model's own stay for every pass it does not: one plane, one slice, packages)."""

    def __init__(self, model_dir: str | Path | None = None, arch: str = "enet", ctx=None,
                 hybridize: bool = True, precision: str = "fp32", calib_volume: np.ndarray | None = None):
        self.ctx = ctx or default_context()
        self.model_dir = Path(model_dir) if model_dir else shipped_model_dir(arch)
        self.precision = precision
        self.helper = None  # a NetworkHelper (engine/infer/helper.py) sharing whole-volume passes, if attached
        # FP32 on oneDNN: the fused graph from the cache when a start before this one made it
        # (engine/infer/graph_cache.py: about 0.2 s of each start), else built and then cached
        fused = fused_network(self.model_dir, self.ctx) if precision == "fp32" and hybridize else None
        self.net, self.info = fused or load_network(self.model_dir, self.ctx)
        self.class_weights = self.info.class_weights
        self.multiple = int(self.net.multiple)
        # of the network as trained: before any inference rewrite (fused_network counted it so)
        self.parameter_count = int(self.net.parameter_count) if fused else count_parameters(self.net)
        self.secondary, self.secondary_info = self._secondary_network(hybridize) if precision == "fp32" else (None, None)
        # the calibration of a fused pass the secondary network ran in (None: the model's own)
        self.secondary_class_weights = self.secondary_info.class_weights if self.secondary_info else None
        if fused:
            return
        if precision == "int8":
            from engine.infer.quantize import calibration_slices, quantize_model, quantized_network

            if calib_volume is None:  # the demo scan's calibration, cached (what int8_eval validated)
                self.net = quantized_network(self.net, self.info, self.ctx)
            else:
                self.net = quantize_model(self.net, calibration_slices(calib_volume), self.ctx)
            if hybridize:  # static buffers: 90 -> 65 ms per U-Net batch of 2 here (2026-12-03), same logits
                self.net.hybridize(static_alloc=True, static_shape=True)
        elif precision != "fp32":
            raise ValueError(f"precision must be fp32 or int8, not {precision!r}")
        else:
            self._prepare_for_inference(hybridize)

    def _secondary_network(self, hybridize: bool):
        """(net, info) of the model folder's secondary planes' network, or (None, None) when it has
        none. A damaged one is an error naming its file, as the model's own network would be: the
        model's version promises it."""
        d = secondary_folder(self.model_dir)
        if d is None:
            return None, None
        fused = fused_network(d, self.ctx) if hybridize else None
        net, info = fused or load_network(d, self.ctx)
        teacher = ((info.meta.get("training") or {}).get("distilled_from") or {}).get("teacher_sha256")
        if teacher and teacher != self.info.meta.get("sha256"):  # the model was retrained since
            raise WeightsError(f"{d / 'model.json'}: this secondary planes' network was distilled from other "
                               f"weights ({teacher[:12]}...) than {self.model_dir / 'model.params'}: train it "
                               "again from them, or remove the folder")
        if info.arch != self.info.arch or int(net.multiple) != self.multiple:
            raise WeightsError(f"{d / 'model.json'}: the secondary planes' network must be a {self.info.arch} "
                               f"taking multiples of {self.multiple} like {self.model_dir}, not a {info.arch} "
                               f"taking multiples of {int(net.multiple)}")
        if not fused:
            _prepare_network(net, hybridize)
        log.info("planes after the first: %s (%s)", info.version, d)
        return net, info

    def _prepare_for_inference(self, hybridize: bool) -> None:
        """Let MXNet's oneDNN subgraph pass fuse conv + BatchNorm + ReLU (+ add) for inference.
        ENet first becomes the same function in fusable operators (ENet.fuse_for_inference):
        20.5 -> 7.2 ms per slice at batch 16 here. U-Net: 73 -> 68 ms per slice at batch 8 and 32.
        Outputs agree within float rounding (tests/engine/test_models.py). static_shape re-plans
        per crop shape, a few per volume.
        Without hybridize (low-memory mode: no static buffers), ENet is still rewritten: its
        PReLUs are as slow imperatively. With oneDNN and hybridize, fused_network does all this
        (and caches the graph); this is what is left: no hybridize, or no oneDNN."""
        _prepare_network(self.net, hybridize)

    @classmethod
    def from_network(cls, net, info: ModelInfo, ctx=None) -> "Segmenter":
        self = cls.__new__(cls)
        self.precision = "fp32"
        self.ctx = ctx or get_mx().cpu()
        self.model_dir = info.directory
        self.net, self.info = net, info
        self.secondary = self.secondary_info = self.secondary_class_weights = None
        self.helper = None
        self.class_weights = info.class_weights
        self.multiple = int(net.multiple)
        self.parameter_count = count_parameters(net)
        return self

    @property
    def name(self) -> str:
        """The model; a segmentation's result.model adds the secondary network when it ran."""
        return self._label()

    def _label(self, ran_second: bool = False) -> str:
        second = f"; later planes {self.secondary_info.version}" if ran_second else ""
        return f"{self.info.arch} ({self.info.version}{', INT8' if self.precision == 'int8' else ''}{second})"

    def predict_slices(self, slices: np.ndarray, uncertainty: bool = False):
        """Normalised slices (N, H, W) -> labels (N, H, W) uint8 [, entropy (N, H, W)]."""
        prob = self.predict_probabilities(slices)
        lab = np.argmax(prob, axis=1).astype(np.uint8)
        if uncertainty:
            return lab, _entropy(prob, axis=1)
        return lab, None

    def predict_probabilities(self, slices: np.ndarray, net=None) -> np.ndarray:
        """Normalised slices (N, H, W) -> softmax class probabilities (N, C, H, W) float32, by the
        model's network or `net` (its secondary planes' network)."""
        mx = get_mx()
        pad = SlicePadding.for_shape(slices.shape[1:], self.multiple)
        x = mx.nd.array(pad.pad(slices)[:, None], ctx=self.ctx)
        prob = mx.nd.softmax((net or self.net)(x), axis=1)
        return pad.unpad(prob.asnumpy())

    def batch_probabilities(self, batch: np.ndarray, flags: int = 0) -> np.ndarray:
        """One batch of a whole-volume pass: by the secondary planes' network if flags has SECONDARY,
        averaged with the left-right flipped batch if it has FLIP (in-plane axis 0 is left-right
        there). What a helper process computes for the jobs it takes (engine/infer/helper.py)."""
        if flags & SECONDARY and self.secondary is None:
            raise ValueError(f"{self.model_dir}: asked for the secondary planes' network, and it has none")
        net = self.secondary if flags & SECONDARY else None
        prob = self.predict_probabilities(batch, net)
        if flags & FLIP:
            prob = 0.5 * (prob + self.predict_probabilities(batch[:, ::-1].copy(), net)[:, :, ::-1])
        return prob

    def _run_batches(self, jobs: list, inputs: Callable, cancel: CancelToken | None):
        """Yield (job, probabilities) in the jobs' order; inputs(job) is (batch, flags). With a helper process attached (self.helper),
        it and this thread each take the next job when free; results are yielded in order, so the
        caller's sums are the same as one process's to the bit. The helper's jobs are fed by a thread
        that only moves arrays through its pipes (never MXNet). If it dies, the job it held is
        computed here. Cancelling stops both after their current job. This thread runs at most
        HELPER_LOOKAHEAD batches ahead of the next one in order (memory)."""
        helper = self.helper if self.helper is not None and len(jobs) > 1 and self.helper.check_alive() else None
        if helper is None:
            for job in jobs:
                if cancel is not None and cancel.cancelled:
                    raise Cancelled()
                yield job, self.batch_probabilities(*inputs(job))
            return
        counter, stop, q = itertools.count(), threading.Event(), queue.Queue()

        def take():  # (next() of a count is atomic: the two threads never get the same job)
            i = next(counter)
            return i if i < len(jobs) else None

        def feed():
            i = None
            try:
                helper.wait_ready()
                while not stop.is_set() and (i := take()) is not None:
                    q.put((i, helper.run(*inputs(jobs[i]))))
                    i = None
            except HelperError:
                q.put((i, None))  # None: the held job (if any) is the parent's now
            except BaseException as exc:  # a bug here must not hang the pass: surface it
                q.put((i, exc))
            finally:
                q.put((-1, None))

        before = helper.batches
        feeder = threading.Thread(target=feed, name="helper-feed", daemon=True)
        feeder.start()
        results, mine, nxt, fed = {}, [], 0, True
        try:
            while nxt < len(jobs):
                while True:  # what the helper finished, or gave back
                    try:
                        i, r = q.get_nowait()
                    except queue.Empty:
                        break
                    if i == -1:
                        fed = False
                    elif isinstance(r, BaseException):
                        raise r
                    elif r is None:
                        if i is not None:
                            mine.append(i)
                    else:
                        results[i] = r
                while nxt in results:
                    yield jobs[nxt], results.pop(nxt)
                    nxt += 1
                if nxt >= len(jobs):
                    break
                if cancel is not None and cancel.cancelled:
                    raise Cancelled()
                i = mine.pop() if mine else take() if not fed or len(results) < HELPER_LOOKAHEAD else None
                if i is not None:
                    results[i] = self.batch_probabilities(*inputs(jobs[i]))
                    continue
                if not fed:
                    raise RuntimeError("a job was lost between the two processes")  # (cannot happen)
                # the helper holds the next in order: wait for it (or for its giving it back)
                waited = time.time()
                while True:
                    if cancel is not None and cancel.cancelled:
                        raise Cancelled()
                    try:
                        q.put(q.get(timeout=0.2))
                        break
                    except queue.Empty:
                        if time.time() - waited > ANSWER_TIMEOUT_S and helper.error is None:
                            helper.abandon(f"no answer in {ANSWER_TIMEOUT_S:.0f} s")  # its batch comes back
        finally:  # (not joined: a feeder still waiting for the helper's start takes no job after this;
            stop.set()  # one still waiting for a batch of a cancelled pass holds the helper's lock)
            log.info("helper process computed %d of %d batches", helper.batches - before, len(jobs))

    def _calibrate(self, probs: np.ndarray, normalise: bool, axis: int = 0, weights=None) -> None:
        """In place: the model's calibration.class_weights (model.json; engine.nets.weights.ModelInfo)
        applied to class probabilities along `axis`, renormalised where they are read as
        probabilities. Applied on the scan's own grid, after the fused probabilities were brought
        back: a renormalisation per work voxel before the interpolation would not commute with it.
        `weights`: other class weights (a fused pass's with the secondary network), else the model's."""
        w = weights or self.class_weights
        if w is None or all(x == 1.0 for x in w):
            return
        shape = [1] * probs.ndim
        shape[axis] = len(w)
        probs *= np.asarray(w, np.float32).reshape(shape)
        if normalise:
            probs /= np.maximum(probs.sum(axis=axis, keepdims=True), np.float32(1e-12))

    def _work_volume(self, vol: np.ndarray, geo: Conform, reuse: bool):
        """(work-grid volume, normalisation scale, foreground threshold), cached for repeated
        partial runs on the same scan (see _volume_stats)."""
        key = (id(vol), vol.shape, vol.dtype.str, vol.__array_interface__["data"][0],
               float(np.asarray(vol[::4, ::4, ::4], dtype=np.float64).sum()),  # 1/64 of the voxels: 0.3 ms
               geo.affine.tobytes())
        cached = getattr(self, "_work", None)
        if reuse and cached is not None and cached[0] == key:
            return cached[1]
        work = geo.to_work(vol)
        thr = foreground_threshold(work)
        scale = normalisation_scale(work, foreground_mask(work, thr)) if thr is not None else 1.0
        self._work = (key, (work, scale, thr))
        return work, scale, thr

    def segment(self, volume: np.ndarray, config: SegmentConfig | None = None,
                progress: Callable[[int, int], None] | None = None,
                cancel: CancelToken | None = None, affine: np.ndarray | None = None) -> SegmentResult:
        """Segment a scan given on its own grid. `affine` (voxel -> world, as nibabel gives it) says
        how the scan lies; without it the array is taken as LAS 1 mm, the OASIS layout. The scan
        is brought to the network's grid (engine/io/conform.py), each plane in config.planes is run
        slice by slice, the class probabilities are averaged, brought back to the scan's grid and
        turned into labels there."""
        cfg = config or SegmentConfig()
        t0 = time.time()
        vol = np.asarray(volume)
        if vol.ndim != 3:
            raise ValueError(f"expected a 3-D volume, got shape {vol.shape}")
        geo = Conform.for_grid(vol.shape, affine)
        if not geo.identity:
            log.info("%s", geo.describe())
        work, scale, thr = self._work_volume(vol, geo, reuse=cfg.slices is not None)
        voxel_ml = abs(float(np.linalg.det(geo.affine[:3, :3]))) / 1000.0
        stripped = cfg.tissue_inside_mask and (cfg.masked or skull_stripped(vol, voxel_ml))
        if cfg.slices is not None:
            return self._segment_slices(vol, geo, work, scale, thr, stripped, cfg, progress, cancel, t0)
        planes = tuple(cfg.planes)
        for p in planes:
            if p not in PLANE_AXIS:
                raise ValueError(f"unknown plane {p!r}; choose from {', '.join(PLANE_AXIS)}")
        plan = {p: None for p in planes}
        region = (work > 0) if stripped else (work > thr) if thr is not None else np.zeros(work.shape, bool)
        todo = {}
        stride = max(1, int(cfg.secondary_stride or SECONDARY_STRIDE.get(self.info.arch, 1)))
        for i, (p, ks) in enumerate(plan.items()):
            ax = PLANE_AXIS[p]
            has = region.any(axis=tuple(a for a in range(3) if a != ax))
            todo[p] = [k for k in (range(work.shape[ax]) if ks is None else ks) if has[k]]
            if i > 0 and stride > 1 and todo[p]:
                todo[p] = sorted(set(todo[p][::stride]) | {todo[p][-1]})
        total = sum(len(v) for v in todo.values())
        probs = np.zeros((NUM_CLASSES,) + work.shape, dtype=np.float32)
        done = 0
        if progress:
            progress(0, total)
        bs = max(1, int(cfg.batch_size or BEST_BATCH.get(self.info.arch, 8)))
        use_second = cfg.secondary_network and self.secondary is not None
        ran_second = False
        views, jobs = [], []  # per plane: its views and buffers; per batch: (plane index, start, ks, bx, by)
        for i, p in enumerate(planes):
            ax = PLANE_AXIS[p]
            # view the work volume with this plane's normal last, so slices are [:, :, k]
            order = [a for a in range(3) if a != ax] + [ax]
            w = np.transpose(work, order)
            fg = np.transpose(region, order)
            acc = np.transpose(probs, [0] + [a + 1 for a in order])
            ks_all = todo[p]
            second = use_second and i > 0 and p in SECONDARY_PLANES and bool(ks_all)
            ran_second = ran_second or second
            # only the computed slices of a sparse plane, compact and slice-major (each one contiguous
            # for the interpolation's reads); interpolated into the sum below
            computed = np.zeros((len(ks_all),) + acc.shape[:3], np.float32) if i > 0 and stride > 1 else None
            flags = (SECONDARY if second else 0) | (FLIP if cfg.flip and p != "sagittal" else 0)
            views.append((w, acc, computed, flags))
            full = slice(0, w.shape[0]), slice(0, w.shape[1])
            for start in range(0, len(ks_all), bs):
                ks = ks_all[start:start + bs]
                # the in-plane box holding this batch's foreground: outer slices are small
                # (one box per plane instead - 13 -> 6 input shapes, each new one costing oneDNN a
                # plan - was slower: ENet's demo segment 4.7 -> 5.6 s, more pixels; 2026-12-03)
                bx, by = foreground_box(fg[:, :, ks], self.multiple) if cfg.crop_to_foreground else full
                jobs.append((i, start, ks, bx, by))

        def inputs(job):
            i, _, ks, bx, by = job
            return normalise(np.moveaxis(views[i][0][bx, by][:, :, ks], 2, 0).astype(np.float32), scale), views[i][3]

        last = {job[0]: n for n, job in enumerate(jobs)}  # each plane's last batch
        with contextlib.closing(self._run_batches(jobs, inputs, cancel)) as results:
            for n, ((i, start, ks, bx, by), prob) in enumerate(results):  # in the jobs' order, whoever ran them
                w, acc, computed, flags = views[i]
                if computed is not None:
                    computed[start:start + len(ks), :, bx, by] = prob
                    if n == last[i]:  # the plane is complete: into the sum, in the planes' order
                        _add_interpolated(acc, computed, todo[planes[i]])
                        views[i] = w, acc, None, flags
                else:
                    acc[:, bx, by, _as_index(ks)] += np.moveaxis(prob, 0, 3)
                done += len(ks)
                if progress:
                    progress(done, total)
        need_probs = cfg.uncertainty or cfg.return_probabilities or (stripped and cfg.refine)
        if len(planes) > 1 and need_probs:  # argmax alone does not need the mean
            probs /= len(planes)
        if need_probs or not stripped:  # (inside a skull-stripped mask every voxel was seen)
            untouched = probs.sum(axis=0) <= 0
            probs[0][untouched] = 1.0  # voxels no network saw are background
        native = geo.probs_to_native(probs)
        self._calibrate(native, normalise=need_probs,
                        weights=(self.secondary_class_weights or self.class_weights) if ran_second else None)
        if stripped and cfg.refine and (vol > 0).sum() > 1000:
            from engine.labels.tissue_model import refine_with_intensities

            t_ref = time.time()
            tissue = native[1:].sum(axis=0)
            native_zooms = np.sqrt((geo.affine[:3, :3] ** 2).sum(axis=0))
            native[1:] = refine_with_intensities(vol, native[1:], vol > 0, voxel_mm=native_zooms) * tissue[None]
            log.info("intensity refinement: %.2f s", time.time() - t_ref)
        if stripped:  # FSL_SEG: inside the mask, tissue only; outside, background
            labels = _argmax_classes(native, first=1)
            labels[vol <= 0] = 0
        else:
            labels = _argmax_classes(native, first=0)
        unc = p_wrong = None
        if cfg.uncertainty:
            unc = _entropy(native, axis=0)
            unc[labels == 0] = 0.0
            p_wrong = (1.0 - np.take_along_axis(native, labels[None].astype(np.intp), 0)[0]).astype(np.float16)
            p_wrong[labels == 0] = 0
        secs = time.time() - t0
        name = self._label(ran_second)
        log.info("segmented %s in %.2f s with %s, planes %s (%d slices run)", vol.shape, secs, name,
                 "+".join(planes), total)
        return SegmentResult(labels, unc, secs, name, total, geo.describe(), planes,
                             native if cfg.return_probabilities else None, p_wrong)


    def _segment_slices(self, vol, geo: Conform, work, scale, thr, stripped, cfg: SegmentConfig, progress,
                        cancel, t0) -> SegmentResult:
        """A few native slices of one plane ("segment this slice"): only the work-grid slices they
        need are run, and only those native slices are brought back (Conform.plane_slice_to_native);
        the rest of the volume stays 0. One pass in that plane, no fusion, no refinement."""
        plane = cfg.slice_plane
        ax = PLANE_AXIS[plane]
        nax = geo.native_axis(plane)
        native_ks = sorted({int(k) for k in cfg.slices if 0 <= k < vol.shape[nax]})
        needed = geo.work_slices_for(plane, native_ks)
        sl = np.moveaxis(np.take(work, needed, axis=ax), ax, 0)  # (N, a, b): work slices in this plane
        region = (sl > 0) if stripped else (sl > thr) if thr is not None else np.zeros(sl.shape, bool)
        run = [i for i in range(len(needed)) if region[i].any()]
        if progress:
            progress(0, len(run))
        stack = np.zeros((len(needed), NUM_CLASSES) + sl.shape[1:], np.float32)
        stack[:, 0] = 1.0  # not run: background
        bs = max(1, int(cfg.batch_size or BEST_BATCH.get(self.info.arch, 8)))
        for start in range(0, len(run), bs):
            if cancel is not None and cancel.cancelled:
                raise Cancelled()
            chunk = run[start:start + bs]
            fg = np.moveaxis(region[chunk], 0, 2)
            bx, by = foreground_box(fg, self.multiple) if cfg.crop_to_foreground else (slice(None), slice(None))
            prob = self.predict_probabilities(normalise(sl[chunk][:, bx, by], scale))
            stack[chunk] = 0.0
            stack[chunk, :, bx, by] = prob
            stack[chunk, 0] += (stack[chunk].sum(axis=1) <= 0)
            if progress:
                progress(min(start + bs, len(run)), len(run))
        by_work = dict(zip(needed, stack))
        labels = np.zeros(vol.shape, dtype=np.uint8)
        unc = np.zeros(vol.shape, dtype=np.float32) if cfg.uncertainty else None
        for k in native_ks:
            p = geo.plane_slice_to_native(plane, k, by_work)  # (C, native slice)
            self._calibrate(p, normalise=True)
            v = np.take(vol, k, axis=nax)
            if stripped:
                lab = (np.argmax(p[1:], axis=0) + 1).astype(np.uint8)
                lab[v <= 0] = 0
            else:
                lab = np.argmax(p, axis=0).astype(np.uint8)
            idx = [slice(None)] * 3
            idx[nax] = k
            labels[tuple(idx)] = lab
            if unc is not None:
                e = _entropy(p, axis=0)
                e[lab == 0] = 0.0
                unc[tuple(idx)] = e
        secs = time.time() - t0
        log.info("segmented %d %s slice(s) of %s in %.3f s with %s", len(native_ks), plane, vol.shape, secs, self.name)
        return SegmentResult(labels, unc, secs, self.name, len(run), geo.describe(), (plane,))


def _argmax_classes(p: np.ndarray, first: int = 0) -> np.ndarray:
    """np.argmax(p[first:], axis=0) + first as uint8, by running comparisons (the first maximum
    wins, as np.argmax): 5x faster than argmax over the leading axis of a (C, X, Y, Z) array."""
    labels = np.full(p.shape[1:], first, dtype=np.uint8)
    best = p[first].copy()
    for c in range(first + 1, p.shape[0]):
        better = p[c] > best
        labels[better] = c
        np.maximum(best, p[c], out=best)
    return labels


def _as_index(ks: list[int]):
    """A slice when ks is an arithmetic progression (every batch, also a strided one): basic
    indexing adds in place without the copies of fancy indexing."""
    if len(ks) > 1:
        step = ks[1] - ks[0]
        if step > 0 and all(b - a == step for a, b in zip(ks[:-1], ks[1:])):
            return slice(ks[0], ks[-1] + 1, step)
    return ks


def _add_interpolated(total: np.ndarray, computed: np.ndarray, ks: list[int]) -> None:
    """total[..., k] += computed[i] for each computed slice k = ks[i] (total: (C, a, b, n),
    computed: (len(ks), C, a, b), slice-major so that each slice read is contiguous), and the linear
    interpolation of its two neighbours for every k between two computed slices. Slices outside
    ks[0]..ks[-1] get nothing. Compact: no full-size copy of the plane's probabilities."""
    tmp = np.empty(computed.shape[1:], np.float32)
    for i, k0 in enumerate(ks):
        total[..., k0] += computed[i]
        if i + 1 == len(ks):
            break
        k1 = ks[i + 1]
        for k in range(k0 + 1, k1):
            w = (k - k0) / (k1 - k0)
            np.multiply(computed[i], 1 - w, out=tmp)
            tmp += w * computed[i + 1]
            total[..., k] += tmp


def _entropy(prob: np.ndarray, axis: int) -> np.ndarray:
    p = np.clip(prob, 1e-8, 1.0)
    return -(p * np.log(p)).sum(axis=axis).astype(np.float32)


INT8_MAX_DICE_CHANGE = 0.005


def int8_offer(model_dir: str | Path) -> tuple[bool, str]:
    """Whether INT8 is offered for this model: only when bench/int8_eval.py measured a Dice change
    of at most INT8_MAX_DICE_CHANGE per class against FP32 and a speed-up (recorded in its
    model.json). ENet's fused FP32 graph is faster than its INT8 one, whose PReLUs stay FP32."""
    from engine.core.hardware import gpu_available  # (without loading MXNet: the panel asks this)

    meta = read_model_dir(model_dir, verify=False).meta
    rec = meta.get("int8")
    if not rec:
        return False, "INT8 has not been validated for this model (run bench/int8_eval.py)"
    try:
        worst = max(abs(float(v)) for v in rec["dice_change"].values())
    except (KeyError, TypeError, ValueError, AttributeError):
        return False, "the model's INT8 record is incomplete (run bench/int8_eval.py again)"
    if gpu_available():  # the Segmenter then runs on the GPU; quantize_model is CPU (oneDNN) only
        return False, "INT8 runs on the CPU only (oneDNN), and this machine segments on its GPU"
    if rec.get("speedup", 0) <= 1.0:
        return False, (f"INT8 is not faster than FP32 for this model ({rec.get('speedup', 0):.2f}x on the demo "
                       "scan); not offered")
    if worst > INT8_MAX_DICE_CHANGE:
        return False, (f"INT8 changed Dice by up to {worst:.4f} on the demo scan "
                       f"(> {INT8_MAX_DICE_CHANGE}); not offered")
    return True, f"INT8: {rec.get('speedup', 0):.1f}x faster, Dice change <= {worst:.4f} per class on the demo scan"


def default_precision(model_dir: str | Path) -> tuple[str, str]:
    """("int8" or "fp32", why): INT8 wherever it is offered for the model (int8_offer: measured
    faster with every class's Dice within INT8_MAX_DICE_CHANGE; today U-Net, 2.1x), FP32 otherwise.
    The CLI's --precision auto, `brainseg batch` and the panel's default follow it."""
    ok, why = int8_offer(model_dir)
    return ("int8" if ok else "fp32"), why


def least_certain_slices(uncertainty: np.ndarray, count: int = 10, mask: np.ndarray | None = None,
                         axis: int = 2) -> list[tuple[int, float]]:
    """Slices along `axis` (the scan's anatomically axial axis: Conform.native_axis("axial"))
    ranked by mean uncertainty over the foreground (or mask): [(k, score)]. Only slices with at
    least a fifth of the largest slice's foreground take part: the last slices of the brain
    (a few hundred voxels, nearly all boundary) are always unsure and not where corrections pay."""
    u = np.asarray(uncertainty, dtype=np.float32)
    m = (u > 0) if mask is None else mask
    other = tuple(a for a in range(3) if a != axis)
    sums = (u * m).sum(axis=other)
    counts = m.sum(axis=other)
    enough = counts > max(50, 0.2 * float(counts.max()) if counts.size else 50)
    score = np.divide(sums, counts, out=np.zeros_like(sums, dtype=np.float64), where=enough)
    order = np.argsort(-score)
    return [(int(k), float(score[k])) for k in order[:count] if score[k] > 0]


@dataclass
class SliceToCheck:
    """One entry of the least-certain list: a slice, how many of its voxels are expected to be
    wrong (the sum of 1 - p(chosen class) over its brain voxels) and that as a share of them."""

    index: int
    expected_wrong: float
    brain_voxels: int

    @property
    def fraction(self) -> float:
        return self.expected_wrong / max(self.brain_voxels, 1)


def slices_to_check(p_wrong: np.ndarray, count: int = 10, axis: int = 2, min_gap: int | None = None
                    ) -> list[SliceToCheck]:
    """Where corrections pay most (issue #19): slices along `axis` ordered by the expected number
    of wrong voxels, spread over the brain - at most one entry per `min_gap` slices (default: the
    brain's extent / (2 * count), at least 3), so the list is not ten neighbours at the vertex.
    `p_wrong` is SegmentResult.p_wrong (0 outside the brain)."""
    p = np.asarray(p_wrong, dtype=np.float32)
    other = tuple(a for a in range(3) if a != axis)
    expected = p.sum(axis=other, dtype=np.float64)
    brain = (p > 0).sum(axis=other)
    present = np.where(brain > 0)[0]
    if present.size == 0:
        return []
    if min_gap is None:
        min_gap = max(3, int((present[-1] - present[0] + 1) / (2 * count)))
    chosen: list[SliceToCheck] = []
    for k in np.argsort(-expected, kind="stable"):
        if expected[k] <= 0 or len(chosen) >= count:
            break
        if all(abs(int(k) - c.index) >= min_gap for c in chosen):
            chosen.append(SliceToCheck(int(k), float(expected[k]), int(brain[k])))
    return chosen
