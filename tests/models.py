"""Untrained model folders for the tests (real MXNet, random weights)."""
from __future__ import annotations


def untrained_enet(directory, version: str, seed: int | None = None, magnitude: float = 3.0,
                   record_arch: bool = True, **arch_kwargs):
    """An ENet model folder with Xavier(magnitude) weights. `seed`: its own draw of mx.random,
    whatever earlier tests did to it (None: the current state). `record_arch`: model.json records
    the architecture's kwargs (skips and any given), else none."""
    from engine.core.mx_env import get_mx
    from engine.nets import get_model
    from engine.nets.weights import write_model_dir

    mx = get_mx()
    if seed is not None:
        mx.random.seed(seed)
    net = get_model("enet", **arch_kwargs)
    net.initialize(mx.init.Xavier(magnitude=magnitude))
    net(mx.nd.zeros((1, 1, 32, 32)))
    write_model_dir(directory, net, "enet", {"skips": True, **arch_kwargs} if record_arch else None, version=version)
    return directory
