"""Fault injection, loaded by worker processes through PYTHONPATH (Python imports `sitecustomize`
at start-up). Production code holds no hook for it.

- tests/engine/test_dist.py: the first worker to finish an epoch exits with code 3, as a crashed
  node would.
- tests/engine/test_batch.py: the first `brainseg batch --jobs` worker to start a scan dies at once
  (os._exit(9), as the kernel's OOM killer would)."""
import os

_batch_marker = os.environ.get("BRAINSEG_TEST_KILL_BATCH_WORKER")
if _batch_marker:
    import engine.batch as _batch

    _real_process = _batch.process_scan

    def _process(*args, **kw):
        try:
            fd = os.open(_batch_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # one death is enough
            return _real_process(*args, **kw)
        os.close(fd)
        os._exit(9)

    _batch.process_scan = _process

_marker = os.environ.get("BRAINSEG_TEST_KILL_ONE_WORKER")
if _marker and os.environ.get("DMLC_ROLE") == "worker":
    import engine.train.loop as _loop

    _real_fit = _loop.fit

    def _fit(*args, **kw):
        callback = kw.get("on_checkpoint")
        if callback is not None:
            def after_epoch(step):
                callback(step)
                try:
                    fd = os.open(_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:  # another worker already died: this one goes on
                    return
                os.close(fd)
                print("fault injection: this worker exits with code 3", flush=True)
                os._exit(3)

            kw["on_checkpoint"] = after_epoch
        return _real_fit(*args, **kw)

    _loop.fit = _fit
