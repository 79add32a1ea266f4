"""Fault injection for tests/engine/test_dist.py, loaded by the workers of a local cluster through
PYTHONPATH (Python imports `sitecustomize` at start-up): the first worker to finish an epoch exits
with code 3, as a crashed node would. Production code holds no hook for it."""
import os

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
