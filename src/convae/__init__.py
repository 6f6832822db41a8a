"""convae: convolutional autoencoders whose decoder mirrors the encoder and restores every shape."""

from convae.errors import ConvaeError
from convae.evaluate import Run, load
from convae.model import AutoEncoder, ModelConfig, build, from_config
from convae.spec import canonical, parse

__version__ = "0.1.0"

__all__ = [
    "AutoEncoder",
    "ConvaeError",
    "ModelConfig",
    "Run",
    "__version__",
    "build",
    "canonical",
    "from_config",
    "load",
    "parse",
]
