"""Data-parallel training on MXNet's parameter server, on loopback: 2 workers + 1 server train like
1 worker with twice the batch; a worker that dies fails the job at once; a hung job times out.

Why the comparison is exact up to float32 rounding: the three training subjects are identical,
so each worker's shard (one subject, 5 labelled slices) is the same data, and one batch of 5 per
worker = the whole shard = one step per epoch, against one worker with one batch of 10 (both copies).
Then every quantity the loss normalises by (the class-weighted pixel count of the CE, the Dice
sums, up to its +1 smoothing) and every BatchNorm batch statistic is the same on half the batch as
on the whole, so the mean of the two workers' gradients equals the single worker's gradient. With
distinct shards BatchNorm statistics would differ per worker and only approximate agreement could
be asked for. What is left is float32 rounding in BatchNorm's reductions over 6,400 vs 12,800 values
(in float64 the gradients agree to 1e-13), 0.3-3.4% of the update here. SGD, not Adam: Adam divides
the gradient's scale away, so it could not see a wrong grad_scale; with SGD a factor of 2 moves the
result by about half of the update, as the half-learning-rate run below shows.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.train.dist import grad_scale, launch_local
from tests.engine.test_oasis_train import make_oasis_tree

REPO = Path(__file__).resolve().parents[2]
# axial slices only: one step per epoch per worker keeps the comparison exact and fast
TINY_ARGS = ["--unet-base", "4", "--unet-levels", "3", "--no-augment", "--optimizer", "sgd", "--lr", "0.05",
             "--log-every", "1", "--planes", "axial"]


def _run_cli(args, timeout=120, **env):
    e = dict(os.environ, OMP_NUM_THREADS="1", **env)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "engine.train.oasis", *args], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - t0


@pytest.fixture(scope="module")
def cluster_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data = make_oasis_tree(root / "data", n=3, identical=True)
    from engine.core.mx_env import get_mx
    from engine.nets import get_model
    from engine.train.oasis import _init_weights

    net = get_model("unet", base=4, levels=3)
    _init_weights(net, get_mx().cpu(), (32, 40), seed=4, init_from=None)  # as train() does
    net.save_parameters(str(root / "init.params"))
    return root, data, root / "init.params"


def _params(path):
    from engine.core.mx_env import get_mx

    return {k: v.asnumpy() for k, v in get_mx().nd.load(str(path)).items()}


def test_grad_scale_is_the_number_of_workers():
    assert grad_scale(1) == 1.0 and grad_scale(2) == 2.0 and grad_scale(0) == 1.0


def test_two_workers_match_one_worker_with_twice_the_batch(cluster_data):
    from engine.train.oasis import TrainConfig, train

    root, data, init = cluster_data
    out = root / "dist"
    proc, secs = _run_cli([str(data), *TINY_ARGS, "--epochs", "3", "--batch-size", "5", "--init-weights", str(init),
                           "--workers", "2", "--servers", "1", "-o", str(out), "--timeout", "100"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / "workers" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]  # bit-identical on both workers
    assert not set(ranks[0]["subjects"]) & set(ranks[1]["subjects"])  # each read its own shard
    assert all(r["steps"] == 3 and r["grad_scale"] == 2.0 and r["num_workers"] == 2 for r in ranks)
    assert json.loads((out / "best" / "model.json").read_text())["workers"] == 2

    common = dict(unet_base=4, unet_levels=3, augment=False, optimizer="sgd", epochs=3, batch_size=10, planes=("axial",),
                  init_weights=str(init), kvstore="local")
    single = train(TrainConfig(str(data), str(root / "single"), lr=0.05, **common))
    train(TrainConfig(str(data), str(root / "half"), lr=0.025, **common))  # what a 2x scale error does
    assert single.steps == 3

    p0, pd = _params(init), _params(out / "checkpoint" / "model.params")
    ps, ph = _params(root / "single" / "checkpoint" / "model.params"), _params(root / "half" / "checkpoint" / "model.params")
    trainable = [k for k in p0 if "running" not in k]

    def rel(a, b):  # distance between two results, relative to how far training moved the weights
        num = np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in trainable))
        return float(num / np.sqrt(sum(((ps[k] - p0[k]) ** 2).sum() for k in trainable)))

    # Rounding alone gave 0.3-3.4% over five random initialisations; a 2x scale error gives ~45%.
    assert rel(pd, ps) < 0.08, rel(pd, ps)
    assert rel(ph, ps) > 0.3, rel(ph, ps)
    for k in ("head.weight", "head.bias"):  # no BatchNorm between the loss and these: closer still
        assert np.linalg.norm(pd[k] - ps[k]) < 0.02 * np.linalg.norm(ps[k] - p0[k]), k
    for k in p0:  # running statistics: averaged over the workers, the same here
        if "running" in k:
            assert np.allclose(pd[k], ps[k], atol=2e-3), k


def test_a_dying_worker_fails_the_job_quickly(cluster_data):
    root, data, init = cluster_data
    # the fault comes from outside the product: a sitecustomize on the workers' PYTHONPATH
    hooks = Path(__file__).resolve().parent / "fault_hooks"
    proc, secs = _run_cli([str(data), *TINY_ARGS, "--epochs", "3", "--batch-size", "5", "--workers", "2",
                           "-o", str(root / "dies"), "--timeout", "100"],
                          PYTHONPATH=str(hooks), BRAINSEG_TEST_KILL_ONE_WORKER=str(root / "killed-one"))
    assert (root / "killed-one").exists()
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "distributed training failed: worker" in proc.stderr and "exited with code 3" in proc.stderr
    assert "stopped the other 3 process(es)" in proc.stderr
    assert secs < 60


def test_launcher_times_out_and_kills_everything(tmp_path):
    messages = []
    t0 = time.time()
    rc = launch_local([sys.executable, "-c", "import time; time.sleep(120)"], workers=2, servers=1, timeout_s=2,
                      report=messages.append, output=None)
    assert rc == 124 and time.time() - t0 < 20
    assert "timed out after 2 s" in messages[0] and "worker 1 (pid" in messages[0]
    pids = [int(p) for p in __import__("re").findall(r"pid (\d+)", messages[0])]
    assert len(pids) == 4
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_worker_needs_a_cluster(cluster_data, tmp_path):
    root, data, _ = cluster_data
    proc, _ = _run_cli([str(data), *TINY_ARGS, "--kvstore", "dist_sync", "-o", str(tmp_path / "x")], timeout=60)
    assert proc.returncode == 2 and "needs a parameter-server cluster" in proc.stderr


def test_stopping_the_launcher_takes_the_cluster_down():
    import re
    import signal

    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            "from engine.train.dist import launch_local\n"
            "launch_local([sys.executable, '-c', 'import time; time.sleep(120)'], workers=1, servers=1, "
            "timeout_s=100, output=None)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.time() + 30
        while "cluster on" not in line and time.time() < deadline:
            line = proc.stderr.readline()
        pids = [int(p) for p in re.findall(r"pid (\d+)", line)]
        assert len(pids) == 3, line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"child {pid} outlived the launcher"


def test_workers_get_the_launchers_options(tmp_path):
    import argparse

    from engine.train.oasis import _train_args, config_from_args, worker_argv

    ap = argparse.ArgumentParser()
    _train_args(ap)
    args = ap.parse_args([str(tmp_path / "data"), "-o", str(tmp_path / "out"), "--model", "enet", "--epochs", "7",
                          "--lr", "0.002", "--class-weights", "median", "--no-augment", "--resume", "--seed", "5",
                          "--export-png", str(tmp_path / "png"), "--workers", "3", "--servers", "2"])
    argv = worker_argv(args)
    assert argv[:3] == [sys.executable, "-m", "engine.train.oasis"] and argv[-1] == "--_worker"
    assert "--workers" not in argv and "--export-png" not in argv  # the launcher's own business
    worker = config_from_args(ap.parse_args(argv[3:]))
    launcher = config_from_args(args)
    assert worker.kvstore == launcher.kvstore == "dist_sync"
    launcher.export_png = None
    assert worker == launcher
