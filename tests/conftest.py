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

from tests.models import untrained_enet  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained ENet model directory (real MXNet, random weights) for pipeline tests."""
    return untrained_enet(tmp_path_factory.mktemp("enet_model"), "tiny-test", magnitude=6, record_arch=False)


@pytest.fixture(scope="session")
def gentle_model_dir(tmp_path_factory):
    """An untrained ENet with small weights: no class probability underflows to 0 in float32, so a
    large enough calibration weight moves every voxel (tiny_model_dir's softmax saturates)."""
    return untrained_enet(tmp_path_factory.mktemp("gentle_enet"), "gentle-test", magnitude=0.5, record_arch=False)
