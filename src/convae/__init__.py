"""convae: convolutional autoencoders whose decoder mirrors the encoder and restores every shape.

Names load on first use, so ``import convae`` (and ``import convae.network.spec``) do
not import torch until a torch-using name is touched.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "AutoEncoder": "convae.network.model",
    "ModelConfig": "convae.network.model",
    "build": "convae.network.model",
    "from_config": "convae.network.model",
    "ConvaeError": "convae.errors",
    "canonical": "convae.network.spec",
    "parse": "convae.network.spec",
    "TrainConfig": "convae.config",
    "fit": "convae.api",
    "Run": "convae.inference.run",
    "load": "convae.inference.run",
}

__all__ = sorted([*_NAMES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'convae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
