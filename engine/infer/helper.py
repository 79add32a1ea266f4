"""A second process that runs some of a whole-volume pass's batches (issue #21, speed).

ENet's layers are too narrow for two OpenMP threads to fill two cores: one stream with two threads
runs the default fused pass's 19 batches in 2.7-3.0 s here, one thread in 3.8 s, while two
processes of one thread each, splitting the batches, are done in 2.0-2.2 s (docs/BENCHMARKS.md,
eleventh session). So a headless `brainseg segment` on a machine with two or more cores and no GPU
starts one helper process that loads the same model; whichever of the two is free takes the next
batch, and the Segmenter applies the results in the batches' order, so labels and probabilities are
bitwise those of one process (oneDNN gives the same outputs with one and two threads: checked, and
tests/engine/test_helper.py compares whole passes).

Not a server: the command that uses a helper starts it and ends it; the helper reads batches on its
stdin and exits at end of file, so it also ends when its parent dies. If it cannot start or dies
mid-pass, the parent computes the batch it held and the rest alone, and logs why. The GUI keeps one
process (it leaves the user a core); `brainseg segment --processes 1` does the same, and a user's
own OMP_NUM_THREADS keeps one process too (their thread count is theirs to choose).

Wire format (this module both ends): a frame is 1 tag byte, 1 flags byte, 1 byte ndim, 1 pad byte,
ndim little-endian uint32 dimensions, then the float32 array's bytes in C order. Parent -> helper:
tag J (flags: 1 the secondary planes' network, 2 the left-right flip) with a batch (N, H, W);
helper -> parent: R once when the model is loaded, then P with the probabilities (N, C, H, W) of each
batch, or E with an error message (a little-endian uint32 length, then utf-8) and exit.
"""
from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# tests: "kill:N" - the helper SIGKILLs itself on receiving its N-th batch; "slow:N:S" - it sleeps S
# seconds before answering its N-th batch (results then arrive out of order); "start:S" - it sleeps S
# seconds before loading the model; "fail:N" - its N-th batch raises (it answers E and exits)
FAULT_ENV = "BRAINSEG_HELPER_FAULT"
ANSWER_TIMEOUT_S = 120.0  # a helper silent this long on one batch is killed and its batch computed by the parent
SECONDARY, FLIP = 1, 2


class HelperError(RuntimeError):
    """The helper process failed or died; what it held must be computed by the parent."""


def plan(requested: str = "auto", cores: int | None = None) -> tuple[int, int] | None:
    """(parent's OpenMP threads, helper's) for `requested` processes ("auto", "1" or "2"), or None
    for one process. auto: two processes where there are two or more cores, no GPU, and the user has
    not set OMP_NUM_THREADS. Call before MXNet loads (the parent's thread count is read then): a
    command that will not share a pass (one slice, say) must not call it, or it runs on half the cores."""
    from engine.core.hardware import cpu_cores, gpu_available

    if requested not in ("auto", "1", "2"):
        raise ValueError(f"processes must be auto, 1 or 2, not {requested!r}")
    if requested == "1":
        return None
    cores = cores or cpu_cores()
    if requested == "auto" and (cores < 2 or "OMP_NUM_THREADS" in os.environ or gpu_available()):
        return None
    if cores <= 3:  # 1 + 1, or 2 + 1: oneDNN's outputs at 1 and 2 threads were checked identical
        return max(1, cores - 1), 1
    # else the same count in both, so which process runs a batch cannot matter whatever the count
    # does to oneDNN's last bits (one core left idle on odd counts)
    return cores // 2, cores // 2


def _write(stream, tag: bytes, arr: np.ndarray, flags: int = 0) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    stream.write(struct.pack(f"<cBBx{arr.ndim}I", tag, flags, arr.ndim, *arr.shape))
    stream.write(memoryview(arr).cast("B"))
    stream.flush()


def _read_exact(stream, n: int, what: str) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            raise EOFError(f"end of stream after {got} of {n} bytes of {what}")
        got += k
    return buf


def _write_error(stream, exc: BaseException) -> None:
    text = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
    stream.write(b"E" + struct.pack("<I", len(text)) + text)
    stream.flush()


def _read(stream) -> tuple[bytes, int, np.ndarray | str | None]:
    """(tag, flags, payload): an array, the message of an E, or None for R."""
    head = _read_exact(stream, 1, "a frame")
    if head == b"R":
        return b"R", 0, None
    if head == b"E":
        (n,) = struct.unpack("<I", _read_exact(stream, 4, "a message length"))
        return b"E", 0, bytes(_read_exact(stream, n, "a message")).decode("utf-8", "replace")
    tag, flags, ndim = bytes(head), *struct.unpack("<BBx", _read_exact(stream, 3, "a frame header"))
    shape = struct.unpack(f"<{ndim}I", _read_exact(stream, 4 * ndim, "a shape"))
    data = _read_exact(stream, 4 * int(np.prod(shape, dtype=np.int64)), "an array")
    return tag, flags, np.frombuffer(data, np.float32).reshape(shape)


class NetworkHelper:
    """The parent's end of one helper process. Its pipe is used under a lock, so a pass that starts
    while a thread of the last one still waits for the helper's start, or for the answer to a batch
    of a cancelled pass, waits its turn instead of reading that answer."""

    def __init__(self, model_dir: str | Path, precision: str = "fp32", threads: int = 1):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self._stderr = tempfile.TemporaryFile()
        # -P: not the current folder first on the path, where another checkout's engine/ could be found
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "engine.infer.helper", str(model_dir),
                                      "--precision", precision],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self.model_dir, self.precision, self.threads = Path(model_dir), precision, threads
        self.ready = False
        self.error: str | None = None
        self.batches = 0  # batches it computed (tests, logs)
        self.started = time.time()
        self._lock = threading.Lock()
        self._fail_lock = threading.Lock()

    def abandon(self, why: str) -> None:
        """Kill it (a thread blocked on its pipe then gets HelperError)."""
        self._fail(why)

    def _fail(self, why: str) -> HelperError:
        """Kill it and keep the first reason (a thread blocked on its pipe then fails too)."""
        with self._fail_lock:
            if self.error is None:
                self.error = why
                by_itself = self.proc.poll() is not None
                self.proc.kill()
                self.proc.wait()
                tail = ""
                if by_itself:  # its last words
                    self._stderr.seek(0)
                    lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
                    tail = f": {lines[-1]}" if lines else ""
                self.error = f"{why} (exit code {self.proc.returncode}{tail})"
                log.warning("helper process: %s; the parent computes the rest alone", self.error)
        return HelperError(self.error)

    def check_alive(self) -> bool:
        """Whether it can take batches; one found dead gets its reason recorded (its last frame,
        an E telling why it could not start, is still in the pipe) and logged."""
        if self.error is None and self.proc.poll() is not None:
            with self._lock:
                try:
                    self._wait_ready()
                except HelperError:
                    pass
            self._fail("it exited")
        return self.error is None

    def wait_ready(self) -> None:
        """Block until the helper has loaded its model; HelperError when it cannot."""
        with self._lock:
            self._wait_ready()

    def _wait_ready(self) -> None:
        if self.ready:
            return
        if self.error is not None:
            raise HelperError(self.error)
        try:
            tag, _, arr = _read(self.proc.stdout)
        except (EOFError, OSError, struct.error, ValueError) as exc:
            raise self._fail(f"it did not start: {exc}") from None
        if tag != b"R":
            raise self._fail(f"it did not start: {_message(tag, arr)}")
        self.ready = True
        log.info("helper process ready in %.2f s (%d thread(s))", time.time() - self.started, self.threads)

    def run(self, batch: np.ndarray, flags: int = 0) -> np.ndarray:
        """The batch's class probabilities, computed by the helper (as Segmenter.batch_probabilities)."""
        with self._lock:
            self._wait_ready()
            if self.error is not None:
                raise HelperError(self.error)
            try:
                _write(self.proc.stdin, b"J", batch, flags)
                tag, _, prob = _read(self.proc.stdout)
            except (EOFError, OSError, struct.error, ValueError) as exc:
                raise self._fail(f"it died: {exc}") from None
            if tag != b"P":
                raise self._fail(_message(tag, prob))
            self.batches += 1
            return prob

    def close(self, wait: bool = True) -> None:
        """End the helper: end of file on its stdin makes it exit at once. wait=False returns
        without reaping it (its exit takes 0.1-0.2 s: unmapping its memory), for a later close()."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if not wait:
            return
        if not self.ready and self.error is None:  # still loading: nothing in flight, no need to wait
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdout, self._stderr):
            try:
                f.close()
            except OSError:
                pass


def _message(tag: bytes, payload) -> str:
    return payload if tag == b"E" else f"unexpected reply {tag!r}"


def start(model_dir: str | Path, precision: str, threads: int) -> NetworkHelper | None:
    """A helper process for this model, or None (logged) when one cannot be started."""
    try:
        return NetworkHelper(model_dir, precision, threads)
    except OSError as exc:
        log.warning("no helper process: %s", exc)
        return None


def main(argv=None) -> int:
    """The helper's side: load the model, then answer batches until stdin ends."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m engine.infer.helper")
    ap.add_argument("model_dir")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "int8"))
    args = ap.parse_args(argv)
    # the frames go to the real stdout; anything else printed (by Python or by a C library) goes to stderr
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    inp = sys.stdin.buffer
    fault = os.environ.get(FAULT_ENV, "").split(":")
    kill_at = int(fault[1]) if fault[0] == "kill" else 0
    slow_at, slow_s = (int(fault[1]), float(fault[2])) if fault[0] == "slow" else (0, 0.0)
    fail_at = int(fault[1]) if fault[0] == "fail" else 0
    if fault[0] == "start":
        time.sleep(float(fault[1]))
    try:
        from engine.core.mx_env import configure_threads

        configure_threads()  # OMP_NUM_THREADS came from the parent
        from engine.infer.inference import Segmenter

        seg = Segmenter(args.model_dir, precision=args.precision)
    except Exception as exc:  # say why, so the parent's log does
        _write_error(out, exc)
        return 1
    out.write(b"R")
    out.flush()
    n = 0
    while True:
        try:
            tag, flags, batch = _read(inp)
        except EOFError:  # the parent is done (or gone): leave at once - MXNet's teardown takes 0.2-0.3 s
            os._exit(0)  # that the parent would wait for, and there is nothing to flush
        n += 1
        if n == kill_at:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        if n == slow_at:
            time.sleep(slow_s)
        try:
            if n == fail_at:
                raise MemoryError("injected for a test")
            prob = seg.batch_probabilities(batch, flags)
        except Exception as exc:  # say why, then leave: the parent computes this batch and the rest
            _write_error(out, exc)
            return 1
        _write(out, b"P", prob)


if __name__ == "__main__":
    sys.exit(main())
