"""Optional features and the extra that installs each (setup.cfg [options.extras_require])."""
from __future__ import annotations

import importlib

EXTRAS = {"distributed": "cluster", "onnx": "export", "onnxruntime": "export", "ml_dtypes": "export",
          "matplotlib": "plots"}


class MissingExtra(ImportError):
    """An optional feature's package is not installed; the message says which extra installs it."""


def need(module: str, feature: str):
    """Import `module` for `feature`, or raise MissingExtra naming the pip extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".")[0], "all")
        raise MissingExtra(f"{feature} needs the {module.split('.')[0]} package, which is not installed: "
                           f"pip install 'brainseg[{extra}]'") from exc
