"""Data-parallel training on MXNet's own parameter server (kvstore ``dist_sync`` / ``dist_device_sync``).

Two halves:

* **Worker side** (`DistContext`): the kvstore, this worker's rank, the gradient scale, a small
  all-reduce for the few numbers workers must agree on (slice counts, class frequencies, BatchNorm
  running statistics), and the one-time parameter broadcast done safely (see `init_trainer`).
* **Launcher** (`launch_local`): a whole cluster on this machine over loopback. It does what
  MXNet's ``tools/launch.py --launcher local`` does, by setting the DMLC variables itself rather
  than copying that script (which on Python 3.11 calls the removed ``Thread.isAlive`` and cannot be
  told to bind to 127.0.0.1): one scheduler and M servers are ``python -c "import mxnet"`` with
  ``DMLC_ROLE`` set (importing mxnet then runs the parameter-server loop, see
  ``mxnet/kvstore/kvstore_server.py``), N workers run the given command. A worker that exits non-zero
  fails the job at once, naming it and its exit code; the rest are killed; an overall timeout kills
  everything. The launcher never waits without a timeout.

Gradient scaling. `engine.train.loop.seg_loss` is already normalised over the batch (class-weighted
cross-entropy divided by the batch's class-weighted pixel count, plus a soft Dice over batch sums),
so one worker steps with ``trainer.step(1)``. ``dist_sync`` *sums* the workers' gradients: with N
workers on batches of B, the pulled gradient is sum_i grad L(batch_i), N times the mean of the
workers' batch-mean gradients, so ``grad_scale = N`` (not ``B * N``, which is right only for a loss
*summed* over samples and would make every step B times too small). The mean of the workers'
gradients equals the gradient of the loss over the combined N*B batch exactly when every worker's
batch has the same normalisers (CE pixel weight, Dice sums, BatchNorm statistics) and closely
otherwise, as in any data-parallel training of a batch-normalised loss. A wrong scale is invisible
with Adam (it divides the scale away, up to epsilon) but not with SGD or gradient clipping;
tests/engine/test_dist.py checks it with SGD on data where the normalisers agree.

Updates run on the workers (``update_on_kvstore=False``): servers only sum gradients and every
worker applies the same optimizer to the same sums, so parameters stay bit-identical and the
cosine learning-rate schedule set on the worker takes effect (with updates on the servers,
``Trainer.set_learning_rate`` never reaches them: apache/mxnet#15919).
"""
from __future__ import annotations

import collections
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.core.hardware import cpu_cores
from engine.core.mx_env import get_mx

log = logging.getLogger(__name__)

DIST_KVSTORES = ("dist_sync", "dist_device_sync")
# Keys the Trainer uses are 0..len(params)-1; our own all-reduce keys live far above them.
_AUX_KEY_BASE = 10_000_000
PS_COMMAND = "import mxnet"  # with DMLC_ROLE=server/scheduler this runs the PS loop and exits
TIMEOUT_EXIT = 124
RANK_MARKER = "brainseg-dist: joined as rank "


class DistError(RuntimeError):
    """A distributed job could not start or did not finish."""


def grad_scale(num_workers: int) -> float:
    """What to pass to ``trainer.step`` under dist_sync for a batch-mean loss: the number of
    workers (the summed gradient divided by N is the mean of the workers' batch-mean gradients)."""
    return float(max(1, int(num_workers)))


def in_cluster() -> bool:
    """True when this process was started as a worker of a parameter-server cluster."""
    return os.environ.get("DMLC_ROLE") == "worker" and bool(os.environ.get("DMLC_PS_ROOT_URI"))


class DistContext:
    """This worker's view of a dist_sync cluster. Create one per process, before the network."""

    def __init__(self, kvstore: str = "dist_sync"):
        if kvstore not in DIST_KVSTORES:
            raise ValueError(f"kvstore {kvstore!r} is not distributed; choose one of {', '.join(DIST_KVSTORES)}")
        if not in_cluster():
            raise DistError(
                f"--kvstore {kvstore} needs a parameter-server cluster (DMLC_ROLE=worker and "
                "DMLC_PS_ROOT_URI are not set): start one on this machine with --workers N --servers M, "
                "or launch the workers with MXNet's tools/launch.py")
        mx = get_mx()
        self.kvstore_type = kvstore
        self.kv = mx.kv.create(kvstore)  # blocks until the scheduler has every node
        self.rank = int(self.kv.rank)
        self.num_workers = int(self.kv.num_workers)
        self._keys: dict[str, int] = {}
        # The scheduler hands out ranks in its own order; tell the launcher which one we got.
        print(f"{RANK_MARKER}{self.rank} of {self.num_workers}", flush=True)
        log.info("worker rank %d of %d joined (%s)", self.rank, self.num_workers, kvstore)

    @property
    def grad_scale(self) -> float:
        return grad_scale(self.num_workers)

    def _key(self, name: str) -> tuple[int, bool]:
        if name in self._keys:
            return self._keys[name], False
        key = _AUX_KEY_BASE + len(self._keys)
        self._keys[name] = key
        return key, True

    def allreduce(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Sum named float arrays over all workers. Every worker must call this with the same names
        and shapes in the same order (as every collective)."""
        mx = get_mx()
        names = list(values)
        arrays = [mx.nd.array(np.asarray(values[n], dtype=np.float32)) for n in names]
        keys, fresh = [], []
        for n, a in zip(names, arrays):
            k, new = self._key(n)
            keys.append(k)
            if new:
                fresh.append((k, a))
        if fresh:  # init is done by rank 0 and ends with a barrier
            self.kv.init([k for k, _ in fresh], [mx.nd.zeros(a.shape) for _, a in fresh])
        self.kv.push(keys, arrays)
        outs = [mx.nd.zeros(a.shape) for a in arrays]
        self.kv.pull(keys, out=outs)
        return {n: o.asnumpy() for n, o in zip(names, outs)}

    def init_trainer(self, trainer) -> None:
        """Broadcast rank 0's parameters to every worker, and finish doing so before any gradient
        is pushed.

        Gluon's Trainer broadcasts lazily inside its first ``step()``: ``kv.init`` plus a *pull* of
        the weights, immediately followed by the push/pull of the first gradients under the same
        keys. With updates on the workers those keys end up holding gradient sums, and nothing
        orders the weight pull before the other workers' gradient round, so a worker can pull the
        summed gradient as its initial weights (seen here with MXNet 1.9.1, intermittently: the
        workers then train different models).
        Doing the broadcast now, waiting for it and then meeting at a barrier removes the race.
        """
        mx = get_mx()
        trainer._init_kvstore()  # private, but the only way to split init from the first step
        if trainer._params_to_init:
            trainer._init_params()
        if trainer._params_to_init:
            raise DistError("some parameters are not initialised yet: run one forward pass before init_trainer")
        if trainer._update_on_kvstore:
            raise DistError("the trainer updates on the kvstore; create it with update_on_kvstore=False")
        mx.nd.waitall()
        self.barrier()

    def average_aux(self, net) -> None:
        """Average the parameters the trainer does not update (BatchNorm running mean/variance)
        over the workers, so every worker (and every checkpoint) holds the same model."""
        aux = [(name, p) for name, p in net.collect_params().items() if p.grad_req == "null"]
        if not aux:
            return
        # Keys by position, not by Gluon's instance-numbered names (same network on every worker).
        summed = self.allreduce({f"aux{i}": p.data().asnumpy() for i, (_, p) in enumerate(aux)})
        for i, (_, p) in enumerate(aux):
            p.set_data(summed[f"aux{i}"] / self.num_workers)

    def barrier(self) -> None:
        self.kv._barrier()

    def close(self) -> None:
        """Leave the cluster (rank 0 also stops the servers). Drop every other reference first."""
        get_mx().nd.waitall()
        self.kv = None


def params_digest(net) -> str:
    """SHA-256 over every parameter array (trainable and running statistics), in network order."""
    h = hashlib.sha256()
    for p in net.collect_params().values():
        a = np.ascontiguousarray(p.data().asnumpy())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------- launcher
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Child:
    """One process of the cluster, in its own process group, its output forwarded with a prefix."""

    def __init__(self, name: str, argv: Sequence[str], env: dict, cwd: str | None, sink, tail_lines: int = 30):
        self.name = name
        self.rank: int | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._sink = sink
        self.proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._pump, name=f"dist-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def label(self) -> str:
        rank = f"rank {self.rank}, " if self.rank is not None else ""
        return f"{self.name} ({rank}pid {self.pid})"

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith(RANK_MARKER):
                try:
                    self.rank = int(line[len(RANK_MARKER):].split()[0])
                except (ValueError, IndexError):
                    pass
            self.tail.append(line)
            if self._sink is not None:
                try:
                    self._sink(f"[{self.name}] {line}")
                except Exception:  # a broken sink must not kill the pump (the pipe would fill up)
                    pass
        self.proc.stdout.close()

    def poll(self) -> int | None:
        return self.proc.poll()

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Signal this child's own process group (its pid, since it leads a new session)."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def join_output(self, timeout: float = 2.0) -> None:
        self._reader.join(timeout)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _stop_all(children: Sequence[_Child], grace_s: float = 3.0) -> None:
    for c in children:
        c.kill(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for c in children:
        try:
            c.proc.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill(signal.SIGKILL)
    for c in children:
        try:
            c.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL not delivered
            log.error("%s (pid %d) did not die after SIGKILL", c.name, c.pid)
        c.join_output(0.5)


def _stderr_sink(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def launch_local(argv_for_worker: Sequence[str], workers: int, servers: int = 1, timeout_s: float | None = 3600.0,
                 *, env: dict | None = None, cwd: str | None = None,
                 report: Callable[[str], None] | None = _stderr_sink,
                 output: Callable[[str], None] | None = _stderr_sink,
                 threads_per_worker: int | None = None, poll_s: float = 0.2, shutdown_s: float = 30.0) -> int:
    """Run ``argv_for_worker`` as N workers of a parameter-server cluster on 127.0.0.1.

    Starts 1 scheduler + ``servers`` servers + ``workers`` workers, each in its own process group,
    with the DMLC variables set (workers also get ``BRAINSEG_WORKER_INDEX``, their launch index; the
    kvstore rank is assigned by the scheduler and is shown once a worker reports it). Children's
    output goes to ``output`` prefixed with their name. Returns 0 when every worker exited 0;
    otherwise the failing worker's exit code (128 + signal when it was killed), or 124 when
    ``timeout_s`` ran out, after killing every other process; the reason goes to ``report`` (stderr
    by default). Ctrl+C or SIGTERM to the launcher also takes the whole cluster down.
    """
    if workers < 1 or servers < 1:
        raise ValueError(f"need at least one worker and one server (got {workers} workers, {servers} servers)")
    report = report or (lambda _msg: None)
    cores = cpu_cores()
    base = dict(os.environ if env is None else env)
    repo_root = str(Path(__file__).resolve().parents[2])  # engine/train/dist.py -> the checkout
    base["PYTHONPATH"] = os.pathsep.join([repo_root] + [p for p in [base.get("PYTHONPATH", "")] if p])
    base.update(DMLC_PS_ROOT_URI="127.0.0.1", DMLC_PS_ROOT_PORT=str(free_port()), DMLC_NUM_SERVER=str(servers),
                DMLC_NUM_WORKER=str(workers), DMLC_INTERFACE="lo", DMLC_NODE_HOST="127.0.0.1", PS_VERBOSE="0",
                PYTHONUNBUFFERED="1")
    per_worker = threads_per_worker or max(1, cores // workers)

    def role_env(role: str, threads: int, **extra) -> dict:
        e = dict(base, DMLC_ROLE=role, **extra)
        e.setdefault("OMP_NUM_THREADS", str(threads))  # a value the caller set is kept
        return e

    children: list[_Child] = []
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigterm(signum, _frame):
            raise SystemExit(128 + signum)

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        ps = [sys.executable, "-c", PS_COMMAND]
        children.append(_Child("scheduler", ps, role_env("scheduler", 1), cwd, output))
        for i in range(servers):
            children.append(_Child(f"server {i}", ps, role_env("server", 1), cwd, output))
        for i in range(workers):
            children.append(_Child(f"worker {i}", argv_for_worker,
                                   role_env("worker", per_worker, BRAINSEG_WORKER_INDEX=str(i)), cwd, output))
        log.info("cluster on 127.0.0.1:%s: %s", base["DMLC_PS_ROOT_PORT"],
                 ", ".join(f"{c.name} pid {c.pid}" for c in children))
        return _supervise(children, servers, timeout_s, report, poll_s, shutdown_s)
    except OSError as exc:
        _stop_all(children)
        report(f"distributed training failed to start: {exc}")
        return 1
    except BaseException:
        _stop_all(children)  # interrupted: never leave a cluster behind
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _supervise(children: list[_Child], servers: int, timeout_s: float | None, report: Callable[[str], None],
               poll_s: float, shutdown_s: float) -> int:
    t0 = time.monotonic()
    infra, worker_children = children[: 1 + servers], children[1 + servers:]

    def fail(culprit: _Child, code: int, why: str) -> int:
        others = [c for c in children if c is not culprit and c.poll() is None]
        _stop_all(children)
        culprit.join_output(1.0)
        tail = "\n".join(f"    {line}" for line in list(culprit.tail)[-12:])
        report(f"distributed training failed: {culprit.label} {why}; stopped the other "
               f"{len(others)} process(es) (pids {', '.join(str(c.pid) for c in others) or '-'})"
               + (f"\n  last output of {culprit.name}:\n{tail}" if tail else ""))
        return code

    while True:
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            running = [c for c in children if c.poll() is None]
            _stop_all(children)
            report(f"distributed training timed out after {timeout_s:.0f} s; killed "
                   f"{', '.join(c.label for c in running) or 'nothing (all had exited)'}")
            return TIMEOUT_EXIT
        for c in worker_children:
            code = c.poll()
            if code is not None and code != 0:
                return fail(c, code if code > 0 else 128 - code, _describe_exit(code))
        for c in infra:
            code = c.poll()
            if code is not None and code != 0:
                return fail(c, 1, _describe_exit(code))
        if all(c.poll() == 0 for c in worker_children):
            break
        time.sleep(poll_s)

    # Every worker is done; rank 0 told the servers to stop, so they and the scheduler exit soon.
    deadline = time.monotonic() + shutdown_s
    for c in infra:
        try:
            c.proc.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s still running %.0f s after the workers finished; killing it", c.label, shutdown_s)
    _stop_all(children)
    for c in infra:
        if c.proc.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
            log.warning("%s %s after the workers finished", c.label, _describe_exit(c.proc.returncode))
    log.info("distributed job finished in %.1f s", time.monotonic() - t0)
    return 0
