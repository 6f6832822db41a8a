"""``convae.fit``: train from Python and get the trained run back.

It sits above both wings: it trains with :mod:`convae.training` and hands back
what :mod:`convae.inference` loads, so neither wing imports the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from convae.config import TrainConfig, resolve_config
from convae.data import PYTHON_SOURCE, from_python
from convae.inference.run import Run, load
from convae.training.train import train


def fit(data: Any = None, *, on_epoch: Callable[[dict], None] | None = None, **settings: Any) -> Run:
    """Train an autoencoder and return the trained run (what :func:`convae.load` returns).

    ``data`` is a ``--data`` source (``"digits"``, ``"npy:PATH"``, ...), a NumPy array or a
    tensor of samples (uint8 images are scaled to [0, 1]; ``spatial_dims=`` for signals and
    volumes), a ``torch.utils.data.Dataset`` of tensors or (tensor, label) pairs (read into
    memory), or a whole :class:`TrainConfig`; ``settings`` are the CLI's settings as keywords
    (``arch=``, ``epochs=``, ``out=``, ...), merged as the CLI merges them: the
    defaults, then the preset's recipe, then these. ``on_epoch`` receives each
    epoch's metrics (a dict) as it ends, for a logger or a stopping rule of your own.
    """
    dataset = None
    if isinstance(data, TrainConfig):
        config = dataclasses.replace(data, **settings) if settings else data
    elif data is None or isinstance(data, str):
        config = resolve_config({**({"data": data} if data is not None else {}), **settings})
    else:
        config = resolve_config({**settings, "data": PYTHON_SOURCE})
        dataset = from_python(data, config.spatial_dims)
    result = train(config, on_epoch=on_epoch, dataset=dataset)
    return load(result["run_dir"])
