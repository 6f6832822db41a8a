"""convae: convolutional autoencoders whose decoder mirrors the encoder and restores every shape.

Names load on first use, so ``import convae`` (and ``import convae.spec``) do
not import torch until a torch-using name is touched.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "AutoEncoder": "convae.model",
    "ModelConfig": "convae.model",
    "build": "convae.model",
    "from_config": "convae.model",
    "ConvaeError": "convae.errors",
    "canonical": "convae.spec",
    "parse": "convae.spec",
    "TrainConfig": "convae.config",
    "fit": "convae.train",
    "Run": "convae.run",
    "load": "convae.run",
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
