"""Model registry in the style of GluonCV's model zoo: `get_model(name, **kw)`."""
from __future__ import annotations

from engine.core.classes import NUM_CLASSES

MODEL_NAMES = ("unet", "enet")


def get_model(name: str, classes: int = NUM_CLASSES, **kw):
    """Build a network by name. Unknown names raise ValueError listing the valid ones."""
    key = name.lower().strip()
    if key == "unet":
        from engine.nets.unet import UNet

        return UNet(classes=classes, **kw)
    if key == "enet":
        from engine.nets.enet import ENet

        return ENet(classes=classes, **kw)
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


def count_parameters(net) -> int:
    return int(sum(p.data().size for p in net.collect_params().values()))
