"""Fixtures shared by the engine and GUI tests."""
import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained ENet model directory (real MXNet, random weights) for pipeline tests."""
    from engine.mx_env import get_mx

    mx = get_mx()
    from engine.models import get_model
    from engine.weights import write_model_dir

    d = tmp_path_factory.mktemp("enet_model")
    net = get_model("enet")
    net.initialize(mx.init.Xavier(magnitude=6))
    net(mx.nd.zeros((1, 1, 32, 32)))
    write_model_dir(d, net, "enet", version="tiny-test")
    return d
