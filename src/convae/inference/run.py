"""A trained run: its model and preprocessing, loaded from a run directory, on raw data.

``load(run_dir)`` gives a :class:`Run`; ``encode``/``decode``/``reconstruct``
take and give data in its original scale (images in [0, 1]), the
normalisation applied and inverted inside. This module never imports the
training code: using a model does not pull in training.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from convae import checkpoint
from convae import data as datasets
from convae.config import TrainConfig
from convae.data import Dataset, run_splits
from convae.data.images import decode_image, image_channels
from convae.data.preprocess import Normalizer
from convae.errors import ConvaeError
from convae.inference.scoring import Scorer, data_range_of
from convae.network.model import AutoEncoder, from_config
from convae.network.segmenter import Segmenter
from convae.runtime import pick_device

SPLITS = ("all", "train", "val", "test")


@dataclass
class Run:
    """A trained model with its preprocessing: ``encode``/``decode`` take and give raw data."""

    model: AutoEncoder
    normalizer: Normalizer
    config: TrainConfig
    run_dir: Path
    device: torch.device
    segmenter: Segmenter | None = None  # DRAEM's second network, for runs trained with --segmenter
    # What is derived from the run and its data once, when first needed (the training split's codes, ...).
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def final(self) -> dict[str, Any]:
        """The metrics the run ended with (``final.json``); empty while it is unfinished."""
        path = self.run_dir / "final.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    # Inputs as the loaders give them: floats in the data's scale (images in [0, 1]), or uint8
    # images, scaled to [0, 1] as the loaders scale them. A tensor in gives a tensor out (on its
    # device), an array in gives an array.

    @torch.no_grad()
    def encode(self, x: np.ndarray | Tensor, batch_size: int = 1024) -> np.ndarray | Tensor:
        crop = self.config.crop
        if crop is not None and any(s != crop for s in x.shape[2:]) and self.model.has_dense:
            raise ConvaeError(
                f"this run trained on {crop}-pixel patches (--crop): its codes are of patches, and its dense "
                f"layers take nothing else; encode inputs of {crop} pixels a side"
            )
        return _like(x, [self.model.encode(b) for b in self._batches(x, batch_size)])

    @torch.no_grad()
    def decode(self, z: np.ndarray | Tensor, batch_size: int = 1024) -> np.ndarray | Tensor:
        codes = torch.as_tensor(np.asarray(z) if not isinstance(z, Tensor) else z, dtype=torch.float32)
        out = [self.normalizer.inverse(self.model.decode(b.to(self.device))) for b in codes.split(batch_size)]
        return _like(z, out)

    @torch.no_grad()
    def reconstruct(self, x: np.ndarray | Tensor, batch_size: int = 1024) -> np.ndarray | Tensor:
        """Reconstructions; a run trained on patches (``crop``) reconstructs larger inputs by sliding windows."""
        scorer = self.scorer()
        return _like(x, [scorer.residual(b)[0] for b in self._batches(x, batch_size, normalized=False)])

    def own_data(self) -> Dataset:
        """The run's own data, loaded as the run loaded it, once per ``Run`` (scoring reads it several times:
        the validation split for a threshold, the training split for codes, the test split)."""
        if "dataset" not in self.memo:
            self.memo["dataset"] = datasets.load_for(self.config)
        return self.memo["dataset"]

    def scorer(self, metric: str = "mse") -> Scorer:
        """What turns raw inputs into reconstructions, anomaly maps and scores (:mod:`convae.inference.scoring`)."""
        return Scorer(
            self.model, self.normalizer, metric, self.config.crop, data_range_of(self.normalizer), self.segmenter
        )

    def _batches(self, x: np.ndarray | Tensor, batch_size: int, normalized: bool = True) -> Iterator[Tensor]:
        x = datasets.floats(x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x)))
        expected = self.model.input_shape
        if x.dim() != len(expected) + 1 or x.shape[1] != expected[0]:
            raise ConvaeError(f"expected inputs shaped (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if len(x) == 0:
            raise ConvaeError("no samples to process")
        for batch in x.split(batch_size):
            yield self.normalizer.transform(batch.to(self.device)) if normalized else batch.to(self.device)


def _like(x: np.ndarray | Tensor, batches: list[Tensor]) -> np.ndarray | Tensor:
    out = torch.cat(batches)
    return out.to(x.device) if isinstance(x, Tensor) else out.cpu().numpy()


def load_run(
    run_dir: str | Path, which: str = "best", device: str = "cpu"
) -> tuple[AutoEncoder, Normalizer, TrainConfig]:
    """A trained model (eval mode) with its normalizer and config, from a run directory."""
    model, normalizer, config, _ = _read(run_dir, which, device)
    return model, normalizer, config


def _read(
    run_dir: str | Path, which: str, device: str
) -> tuple[AutoEncoder, Normalizer, TrainConfig, Segmenter | None]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConvaeError(f"{run_dir}: no such run directory")
    path = run_dir / f"{which}.pt"
    if not path.exists():
        raise ConvaeError(f"{run_dir}: no {which}.pt checkpoint (has it finished an epoch?)")
    state = checkpoint.load(path, map_location=pick_device(device))
    model = from_config(state["model_config"])
    checkpoint.load_weights(model, state["model"], path)
    model.eval()
    config = TrainConfig.from_saved(state["train_config"])
    segmenter = None
    if config.segmenter:
        segmenter = Segmenter(config.segmenter, model.input_shape)
        checkpoint.load_weights(segmenter, state["head"], path)
        segmenter.eval()
    return model, Normalizer.from_dict(state["normalizer"]), config, segmenter


def load(run_dir: str | Path, which: str = "best", device: str = "cpu") -> Run:
    """Load a trained run: the model (eval mode) with its preprocessing, on ``device``."""
    target = pick_device(device)
    model, normalizer, config, segmenter = _read(run_dir, which, device)
    segmenter = segmenter.to(target) if segmenter is not None else None
    return Run(model.to(target), normalizer, config, Path(run_dir), target, segmenter=segmenter)


def as_run(run: str | Path | Run) -> Run:
    return run if isinstance(run, Run) else load(run)


# ----------------------------------------------------------------------------- the run's data


def take(y: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    return None if y is None else y[idx]


def dataset_split(
    run: Run, data: str | None, split: str, dataset: Dataset | None = None, at_most: int | None = None
) -> tuple[np.ndarray, np.ndarray | None, Dataset]:
    """Samples and labels of a split of the run's data (or of ``data``): ``test``, ``val``, ``train``, ``all``.

    ``test`` of a source without a test split is the split the run held out
    (``test_fraction``; a run that held none out, its validation split), so that
    nothing is measured on samples the model trained on; of another dataset than
    the run's, all of it. ``all`` is the whole training file. ``dataset``, when
    given, is ``data`` (or the run's data) already loaded. With ``at_most``, only
    that many samples are read, evenly spread over the split (every k-th).
    """
    if dataset is None:
        dataset = run.own_data() if data in (None, run.config.data) else datasets.load_for(run.config, data)
    channels = run.model.input_shape[0]
    if dataset.sample_shape[0] != channels:
        raise ConvaeError(
            f"{data or run.config.data}: samples have {dataset.sample_shape[0]} channel(s), "
            f"the run's model takes {channels}"
        )
    part, idx = _locate(run, data, split, dataset)
    x, y = (dataset.x_test, dataset.y_test) if part == "test" else (dataset.x_train, dataset.y_train)
    if at_most is not None and len(x if idx is None else idx) > at_most:
        idx = np.arange(len(x)) if idx is None else idx
        idx = idx[:: -(-len(idx) // at_most)]
    if idx is None:
        return datasets.floats(x), y, dataset
    return datasets.floats(x[idx]), take(y, idx), dataset


def split_files(run: Run, data: str | None, split: str, dataset: Dataset) -> list[str] | None:
    """The file of each sample of :func:`dataset_split`'s split, where the source has files (folders)."""
    part, idx = _locate(run, data, split, dataset)
    files = dataset.test_files if part == "test" else dataset.files
    if files is None:
        return None
    return [str(f) for f in (files if idx is None else [files[i] for i in idx])]


def _locate(run: Run, data: str | None, split: str, dataset: Dataset) -> tuple[str, np.ndarray | None]:
    """Where a split's samples are: ("test", None), the source's test split, or ("train", rows) of
    the training file (None: all of it)."""
    if split not in SPLITS:
        raise ConvaeError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    cfg = run.config
    own = data is None or data == cfg.data
    if split == "test" and dataset.x_test is not None:
        return "test", None
    if split in ("val", "train") or (split == "test" and own):
        if not own:
            raise ConvaeError(f"the {split} split is the run's own; {data} has no such split")
        splits = run_splits(dataset, cfg)
        idx = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
        if split == "test" and len(idx) == 0:
            idx = splits.val
        if split != "train" and len(idx) == 0:
            raise ConvaeError(
                f"{cfg.data} has no test split and the run kept no validation split (val_fraction 0): "
                "every sample was trained on; give --data with held-out samples"
            )
        return "train", idx
    return "train", None


def encode_dataset(
    run: str | Path | Run, data: str | None = None, split: str = "all", progress: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes of every sample of a split (``all``: the whole training file), with labels when known."""
    run = as_run(run)
    x, y, _ = dataset_split(run, data, split)
    batches = range(0, len(x), 1024)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, unit="batch", disable=None)
    codes = np.concatenate([run.encode(x[i : i + 1024]) for i in batches])
    return codes, y


def read_images(run: Run, paths: list[str]) -> list[np.ndarray]:
    """Image files as (C, H, W) arrays in the data's scale, decoded as training decoded its folders
    (:func:`convae.data.images.decode_image`: 16-bit grey scaled to 8 bits, then to [0, 1]), checked
    against the model's channels and size."""
    channels = run.model.input_shape[0]
    arrays = []
    for path in paths:
        found = image_channels(path)
        if found != channels:
            raise ConvaeError(f"{path}: has {found} channel(s), the model takes {channels}")
        a = decode_image(path, "L" if channels == 1 else "RGB", None)
        if run.model.has_dense and run.config.crop is None and a.shape[1:] != tuple(run.model.input_shape[1:]):
            h, w = run.model.input_shape[1:]
            raise ConvaeError(f"{path}: is {a.shape[2]}x{a.shape[1]} pixels, the model takes {w}x{h}")
        arrays.append(datasets.floats(a))
    if not arrays:
        raise ConvaeError("no input images given")
    return arrays
