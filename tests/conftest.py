"""Fixtures shared by the engine and GUI tests."""
import atexit
import os
import shutil
import tempfile

# Tests run many short MXNet calls in several processes on 2 cores: idle OpenMP workers must
# sleep, not spin (spinning made a tiny ENet forward 4-5 s instead of 0.07 s here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The start-up caches (MXNet's operator code, the fused and INT8 graphs of every test model) go to a
# folder of this test run, not the user's ~/.cache/brainseg, whose entries the tests' tiny models
# would otherwise evict. Subprocesses inherit it.
if "BRAINSEG_CACHE" not in os.environ:
    os.environ["BRAINSEG_CACHE"] = tempfile.mkdtemp(prefix="brainseg-test-cache-")
    atexit.register(shutil.rmtree, os.environ["BRAINSEG_CACHE"], True)

import pytest  # noqa: E402


def _untrained_enet(directory, magnitude: float, version: str):
    from engine.core.mx_env import get_mx

    mx = get_mx()
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir

    net = get_model("enet")
    net.initialize(mx.init.Xavier(magnitude=magnitude))
    net(mx.nd.zeros((1, 1, 32, 32)))
    write_model_dir(directory, net, "enet", version=version)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained ENet model directory (real MXNet, random weights) for pipeline tests."""
    return _untrained_enet(tmp_path_factory.mktemp("enet_model"), 6, "tiny-test")


@pytest.fixture(scope="session")
def gentle_model_dir(tmp_path_factory):
    """An untrained ENet with small weights: no class probability underflows to 0 in float32, so a
    large enough calibration weight moves every voxel (tiny_model_dir's softmax saturates)."""
    return _untrained_enet(tmp_path_factory.mktemp("gentle_enet"), 0.5, "gentle-test")
