"""``convae.fit``: train from Python and get the trained run back.

It sits above both wings: it trains with :mod:`convae.training` and hands back
what :mod:`convae.inference` loads, so neither wing imports the other.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convae.config import TrainConfig, resolve_config
from convae.data import PYTHON_SOURCE, from_python
from convae.errors import ConvaeError
from convae.inference.run import Run, load
from convae.training.train import train


def fit(
    data: Any = None,
    *,
    resume: str | Path | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    **settings: Any,
) -> Run:
    """Train an autoencoder and return the trained run (what :func:`convae.load` returns).

    ``data`` is a ``--data`` source (``"digits"``, ``"npy:PATH"``, ...), a NumPy array or a
    tensor of samples (uint8 images are scaled to [0, 1]; ``spatial_dims=`` for signals and
    volumes), a ``torch.utils.data.Dataset`` of tensors or (tensor, label) pairs, streamed: its
    items are read as training asks for them, through DataLoader workers (``placement="stream"``
    keeps it out of memory; ``auto`` holds it when it fits in a quarter of free memory), or an
    ``IterableDataset`` (read once into a temporary file, then streamed), or a whole
    :class:`TrainConfig`; ``settings`` are the CLI's settings as keywords (``arch=``,
    ``epochs=``, ``out=``, ...), merged as the CLI merges them: the defaults, then the preset's
    recipe, then these. ``resume`` continues the run in that directory (with ``data``, the
    Python data it was trained on; ``epochs=`` trains it on further). ``on_epoch`` receives
    each epoch's metrics (a dict) as it ends, for a logger or a stopping rule of your own.
    """
    if resume is not None:
        extra = set(settings) - {"epochs", "max_steps", "quiet"}
        if extra:
            raise ConvaeError(
                f"a resumed run keeps its settings; only epochs and max_steps may change, not {sorted(extra)}"
            )
        dataset = None
        if data is not None and not isinstance(data, str):
            saved = TrainConfig.from_saved(json.loads((Path(resume) / "config.json").read_text()))
            dataset = from_python(data, saved.spatial_dims, labels=_wants_labels(saved))
        result = train(resume=resume, on_epoch=on_epoch, dataset=dataset, **settings)
        return load(result["run_dir"])
    dataset = None
    if isinstance(data, TrainConfig):
        config = dataclasses.replace(data, **settings) if settings else data
    elif data is None or isinstance(data, str):
        config = resolve_config({**({"data": data} if data is not None else {}), **settings})
    else:
        config = resolve_config({**settings, "data": PYTHON_SOURCE})
        dataset = from_python(data, config.spatial_dims, labels=_wants_labels(config))
    result = train(config, on_epoch=on_epoch, dataset=dataset)
    return load(result["run_dir"])


def _wants_labels(config: TrainConfig) -> bool:
    """Whether training reads the labels (to choose classes); otherwise a Dataset's are not read."""
    return config.normal_class is not None or bool(config.exclude_classes)
