"""The one long-lived thread on which every MXNet call of the app runs.

MXNet's Python API is not thread-safe (apache/mxnet #12756, #17612), so the GUI never calls it:
it submits jobs (plain callables taking the `EngineState`) to this thread and gets results,
progress and errors back as queued Qt signals. The GUI thread never waits on MXNet. Each job
gets a CancelToken; `cancel_current()` sets it and the job stops within one batch.
"""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from PyQt5 import QtCore

from engine.core.cancel import Cancelled, CancelToken

log = logging.getLogger(__name__)


@dataclass
class EngineState:
    """Lives on the engine thread: loaded models by directory, so each loads once."""

    segmenters: dict = field(default_factory=dict)

    def segmenter(self, model_dir, precision: str = "fp32"):
        from engine.infer.inference import Segmenter

        key = (str(model_dir), precision)
        if key not in self.segmenters:
            self.segmenters.clear()  # one loaded model at a time: versions pile up otherwise
            self.segmenters[key] = Segmenter(model_dir, precision=precision)
        return self.segmenters[key]


@dataclass
class Job:
    id: int
    name: str
    fn: Callable[[EngineState, Callable[[Any], None], CancelToken], Any]
    cancel: CancelToken
    background: bool = False  # prefetch: no busy state, no signals


class EngineThread(QtCore.QThread):
    progress = QtCore.pyqtSignal(int, str, object)  # job id, job name, payload
    finished_job = QtCore.pyqtSignal(int, str, object)  # job id, job name, result
    failed = QtCore.pyqtSignal(int, str, str)  # job id, job name, message
    cancelled = QtCore.pyqtSignal(int, str)
    busy_changed = QtCore.pyqtSignal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._current: Job | None = None
        self._outstanding = 0  # submitted and not finished: busy from submit(), not from pickup
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self.state = EngineState()
        self.setObjectName("brainseg-engine")

    def submit(self, name: str, fn) -> int:
        job = Job(next(self._ids), name, fn, CancelToken())
        with self._lock:
            self._outstanding += 1
            self._jobs[job.id] = job
        self._queue.put(job)
        self.busy_changed.emit(True)
        return job.id

    def prefetch(self, name: str, fn: Callable[[EngineState], Any]) -> None:
        """Run fn(state) when the thread gets to it, without making the engine busy or emitting
        signals: work a later job will need anyway (loading the model while the user looks at
        the scan), so that job starts at once. Failures are only logged; the real job reports."""
        self._queue.put(Job(0, name, lambda state, progress, cancel: fn(state), CancelToken(), background=True))

    def cancel(self, job_id: int) -> None:
        """Cancel one job, queued or running (a queued one stops at its first check)."""
        job = self._jobs.get(job_id)
        if job is not None:
            job.cancel.cancel()

    def cancel_current(self) -> None:
        job = self._current
        if job is not None:
            job.cancel.cancel()

    def cancel_all(self) -> int:
        """Cancel every job submitted and not finished: the running one stops within a batch, a
        queued one (behind a model preload, say) is reported cancelled without running. Returns
        how many were cancelled."""
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.cancel()
        return len(jobs)

    @property
    def is_busy(self) -> bool:
        return self._outstanding > 0

    def stop(self, wait_ms: int = 10000) -> bool:
        """Drop queued jobs, cancel the running one, end the thread. True when it has ended."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self.cancel_current()
        self._queue.put(None)
        return self.wait(wait_ms) if self.isRunning() else True

    def run(self) -> None:  # runs on the engine thread
        import sys

        from engine.core.mx_env import start_mxnet_below_gui_priority

        if "mxnet" in sys.modules:
            log.warning("mxnet was loaded outside the engine thread; its threads keep the GUI's priority")
        start_mxnet_below_gui_priority()
        # Move everything loaded so far (Qt, pyqtgraph, MXNet, numpy...) out of the garbage
        # collector's reach: a full collection over them held the GIL for 80 ms in the middle of
        # a fine-tune, and the GUI thread stalled behind it (bench/finetune_gui_bench.py).
        import gc

        gc.freeze()
        while True:
            job = self._queue.get()
            if job is None:
                break
            if job.background:
                try:
                    job.fn(self.state, lambda payload: None, job.cancel)
                except Exception:
                    log.warning("background %s failed:\n%s", job.name, traceback.format_exc())
                continue
            self._current = job
            self.busy_changed.emit(True)
            try:
                if job.cancel.cancelled:  # cancelled while it waited in the queue
                    raise Cancelled()
                result = job.fn(self.state, lambda payload, j=job: self.progress.emit(j.id, j.name, payload),
                                job.cancel)
            except Cancelled:
                self.cancelled.emit(job.id, job.name)
            except Exception as exc:  # reported to the GUI, never kills the thread
                log.error("engine job %s failed:\n%s", job.name, traceback.format_exc())
                self.failed.emit(job.id, job.name, f"{type(exc).__name__}: {exc}")
            else:
                self.finished_job.emit(job.id, job.name, result)
            finally:
                self._current = None
                with self._lock:
                    self._outstanding -= 1
                    self._jobs.pop(job.id, None)
                self.busy_changed.emit(self._outstanding > 0)
