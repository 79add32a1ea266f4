"""Load MXNet with the thread settings chosen before it starts (MXNet reads them only at load).

`OMP_NUM_THREADS` unset made MXNet 1.9.1 use one core of two here, about 2x slower; a spinning
OpenMP thread next to a busy GUI thread made convolutions up to 4x slower. So: all cores for
headless work; in the GUI (`interactive=True`) a passive waiting policy, so idle OpenMP workers
sleep instead of spinning against the GUI thread. Measured (docs/BENCHMARKS.md): with a bounded
spin instead (GOMP_SPINCOUNT=200000) a GUI fine-tune ran 61 s instead of 67 s but stalled the
event loop for 174 ms instead of <= 50 ms, so the GUI keeps PASSIVE. Import mxnet only through
`get_mx()`.
"""
from __future__ import annotations

import logging
import os

from engine.core.hardware import cpu_cores

log = logging.getLogger(__name__)
_mx = None


def configure_threads(interactive: bool = False, threads: int | None = None) -> None:
    """Set OpenMP/MXNet thread variables unless the user set them. Must run before mxnet loads."""
    cores = cpu_cores()
    n = threads or cores
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE" if interactive else "ACTIVE")
    # MXNet's own engine: one worker avoids oversubscribing the cores with OpenMP inside each op.
    os.environ.setdefault("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice")


ENGINE_NICE = 10


def start_mxnet_below_gui_priority() -> None:
    """Load MXNet and start its compute threads (the engine's CPU worker and its OpenMP team) from
    a short-lived helper thread at lower priority (Linux: nice is per thread, and threads it starts
    inherit it), while the calling Python thread keeps normal priority. Then the GUI thread gets a
    core at once when it has work (CFS weights 1024 vs 110) and training still gets every core when
    it is idle; and the Python threads that pass the GIL between them (GUI, engine) are equals, so
    the GUI never waits for the GIL behind a deprioritised thread that the scheduler has put aside."""
    import threading

    def work():
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), ENGINE_NICE)
        except (AttributeError, OSError):  # not Linux-like, or not permitted: normal priority
            pass
        mx = get_mx()
        x = mx.nd.ones((1, 8, 16, 16))
        w = mx.nd.ones((8, 8, 3, 3))
        mx.nd.Convolution(x, w, kernel=(3, 3), num_filter=8, no_bias=True, pad=(1, 1)).wait_to_read()

    t = threading.Thread(target=work, name="mxnet-start")
    t.start()
    t.join()


def _stdlib_distutils() -> dict:
    """Put the standard library's distutils (Python <= 3.11) in sys.modules, bypassing setuptools'
    import shim, unless some distutils is already there. Returns the modules it added, by name, for
    the caller to take out again; {} where there is none (Python 3.12 has no distutils)."""
    import importlib.machinery
    import importlib.util
    import sys
    import sysconfig
    import warnings

    if "distutils" in sys.modules:
        return {}
    try:
        spec = importlib.machinery.PathFinder.find_spec("distutils", [sysconfig.get_paths()["stdlib"]])
        if spec is None or spec.loader is None:
            return {}
        module = importlib.util.module_from_spec(spec)
        sys.modules["distutils"] = module
        with warnings.catch_warnings():  # "distutils is deprecated": it is mxnet's import, not ours
            warnings.simplefilter("ignore", DeprecationWarning)
            spec.loader.exec_module(module)
            importlib.import_module("distutils.version")
    except Exception as e:  # noqa: BLE001 - never why mxnet fails to import: the shim answers instead
        log.debug("standard distutils not lent to mxnet's import (%s)", e)
        for m in [m for m in sys.modules if m == "distutils" or m.startswith("distutils.")]:
            del sys.modules[m]
        return {}
    return {m: mod for m, mod in sys.modules.items() if m == "distutils" or m.startswith("distutils.")}


def get_mx():
    """The mxnet module, imported once after configure_threads()."""
    global _mx
    if _mx is None:
        if "OMP_NUM_THREADS" not in os.environ:
            configure_threads()
        import sys

        # Start-up (issue #21: 3.3 s of ENet's 6.1 s segment was start-up). Two things mxnet's
        # import pulls in that nothing here uses, hidden during the import only (later code may
        # import them normally):
        # - scikit-learn: mxnet/model.py makes its legacy FeedForward class a BaseEstimator (0.5 s);
        # - scipy.stats: mxnet.contrib.quantization's *entropy* calibration (0.38 s measured; the
        #   import is guarded upstream, and engine/infer/quantize.py brings it back for "entropy").
        # - onnx (with protobuf; mxnet.onnx's translations keep it as a module global: onnx_for_export()
        #   gives it back before an export) and scipy.sparse (mxnet converts scipy sparse matrices,
        #   which nothing here passes it): 0.1 s together.
        hidden = [m for m in ("sklearn", "scipy.stats", "onnx", "scipy.sparse") if m not in sys.modules]
        for m in hidden:
            sys.modules[m] = None  # type: ignore[assignment]
        # - setuptools, which its distutils shim imports (0.09 s) when mxnet.numpy_dispatch_protocol
        #   asks for distutils.version: the standard library's distutils answers during the import
        #   (_stdlib_distutils), and is taken out of sys.modules afterwards, so that a later import
        #   of distutils or setuptools finds the shim as before (and setuptools has nothing to warn about);
        # - and the 2,556 operator functions mxnet compiles from generated source at every import
        #   come from a disk cache of their bytecode (engine/core/mx_opcache.py).
        lent = {}
        try:
            lent = _stdlib_distutils()
            from engine.core.mx_opcache import import_mxnet_cached

            mx = import_mxnet_cached()  # deliberately late: env must be set first
        finally:
            for m in hidden:
                if sys.modules.get(m, 0) is None:
                    del sys.modules[m]
            for m, module in lent.items():  # only what was lent: not a distutils set up meanwhile
                if sys.modules.get(m) is module:
                    del sys.modules[m]

        _mx = mx
        log.info("mxnet %s loaded, OMP_NUM_THREADS=%s", mx.__version__, os.environ.get("OMP_NUM_THREADS"))
    return _mx


def onnx_for_export():
    """mx.onnx ready to export; returns the onnx module. get_mx() hid onnx while mxnet imported, so
    mxnet registered no operator translations (its register() skips them without onnx) and its
    translation modules hold onnx = None: they are imported again, now with onnx."""
    import importlib

    import onnx  # noqa: PLC0415
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph  # noqa: PLC0415

    if not MXNetGraph.registry_.get(12) or not MXNetGraph.registry_.get(13):
        for name in ("_op_translations_opset12", "_op_translations_opset13"):
            importlib.reload(importlib.import_module(f"mxnet.onnx.mx2onnx._op_translations.{name}"))
    return onnx


def _mxnet_sees_a_gpu() -> bool:
    """MXNet's own answer (loads MXNet: engine thread only). hardware.gpu_available asks without
    loading it."""
    mx = get_mx()
    try:
        return mx.context.num_gpus() > 0
    except Exception:  # CPU builds raise when asked
        return False


def default_context():
    mx = get_mx()
    return mx.gpu(0) if _mxnet_sees_a_gpu() else mx.cpu()
