"""Datasets: named sources -> float32 arrays ``(N, C, H, W)`` in [0, 1] (images) with labels.

Independent of the model. Sources for ``--data``:

==================  ===========================================================
``fashion-mnist``   IDX files, looked up in ``data_dir``, ``$CONVAE_DATA``,
``mnist``           ``~/.cache/convae/<name>``, ``/usr/share/datasets/<name>``;
                    downloaded (checksums verified) when absent.
``digits``          scikit-learn's bundled 8x8 digits, always offline.
``folder:PATH``     PNG/JPEG/BMP/TIFF files found recursively; subfolder names
                    are the labels when every image sits in one; ``train/``
                    and ``test/`` subfolders are the splits.
``npy:PATH``        ``.npy`` or ``.npz``: (N, H, W), (N, C, H, W) or (N, H, W, C).
``mvtec:PATH``      MVTec AD's layout: ``train/good``, ``test/TYPE``, ``ground_truth/TYPE``
                    masks (:mod:`convae.data.mvtec`).
==================  ===========================================================
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convae.data import cache
from convae.data.rows import FileArray
from convae.data.samples import as_samples
from convae.errors import ConvaeError


@dataclass
class Dataset:
    """Samples (N, C, *spatial) and labels (may be None). uint8 images stay uint8 here, 4x smaller
    than float32; :func:`floats` gives them in the data's scale ([0, 1]), as every consumer sees them."""

    name: str
    x_train: np.ndarray | FileArray
    y_train: np.ndarray | None = None
    x_test: np.ndarray | FileArray | None = None
    y_test: np.ndarray | None = None
    classes: list[str] | None = None
    stamp: str | None = None  # identifies the source's contents (files' sizes and times): a resume checks it
    masks: np.ndarray | None = None  # (N_test, 1, H, W) uint8: where the test split's defects are (mvtec:)
    files: list | None = None  # the file of each training-file sample, where it has them (folders)
    test_files: list | None = None  # the test split's files, where it has them (folders, mvtec:)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


# ----------------------------------------------------------------------------- IDX (MNIST-style)

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
IDX_SOURCES: dict[str, dict] = {
    "fashion-mnist": {
        "mirrors": [
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ],
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
        "apt": "dataset-fashion-mnist",
    },
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "classes": [str(i) for i in range(10)],
        "apt": None,
    },
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip or plain) into a NumPy array, checking its header and length."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise ConvaeError(f"{path}: cannot read IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ConvaeError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConvaeError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ConvaeError(
            f"{path}: truncated or oversized IDX data ({len(raw) - header} bytes, header says {expected})"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _candidate_dirs(name: str, data_dir: str | None) -> list[Path]:
    dirs: list[Path] = []
    for root in (data_dir, os.environ.get("CONVAE_DATA")):
        if root:
            dirs += [Path(root), Path(root) / name]
    dirs.append(Path.home() / ".cache" / "convae" / name)
    dirs.append(Path("/usr/share/datasets") / name)
    return dirs


def _find_idx(directory: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in _IDX_FILES.items():
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def download_idx(name: str, dest: Path, mirrors: Sequence[str] | None = None, timeout: float = 20) -> dict[str, Path]:
    """Download a dataset's four IDX files into ``dest``, verifying MD5 checksums.

    Each file is written to a temporary name and renamed once verified, so an
    interrupted download never leaves a file that looks complete.
    """
    source = IDX_SOURCES[name]
    dest.mkdir(parents=True, exist_ok=True)
    errors = []
    for filename, md5 in source["md5"].items():
        target = dest / filename
        if target.is_file() and hashlib.md5(target.read_bytes()).hexdigest() == md5:
            continue
        for mirror in mirrors or source["mirrors"]:
            try:
                with urllib.request.urlopen(mirror + filename, timeout=timeout) as response:
                    payload = response.read()
            except (urllib.error.URLError, OSError, ValueError) as err:
                errors.append(f"{mirror}{filename}: {err}")
                continue
            if hashlib.md5(payload).hexdigest() != md5:
                errors.append(f"{mirror}{filename}: checksum mismatch")
                continue
            with tempfile.NamedTemporaryFile(dir=dest, delete=False, suffix=".part") as tmp:
                tmp.write(payload)
            os.replace(tmp.name, target)
            break
        else:
            raise ConvaeError(f"could not download {name}: " + "; ".join(errors[-2:]))
    return {key: dest / f"{stem}.gz" for key, stem in _IDX_FILES.items()}


def load_idx_dataset(name: str, data_dir: str | None = None, download: bool = True) -> Dataset:
    """Load an MNIST-style dataset by name, downloading it when it is nowhere local."""
    dirs = _candidate_dirs(name, data_dir)
    files = next((f for f in map(_find_idx, dirs) if f), None)
    if files is None:
        download_error = "downloads disabled"
        if download:
            try:
                files = download_idx(name, Path.home() / ".cache" / "convae" / name)
            except ConvaeError as err:
                download_error = str(err)
        if files is None:
            source = IDX_SOURCES[name]
            how = f"`apt-get install {source['apt']}`, or " if source["apt"] else ""
            raise ConvaeError(
                f"{name} not found (looked in {', '.join(map(str, dirs))}; {download_error}); get it with "
                f"{how}download the four files from {source['mirrors'][0]} into one of those folders"
            )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ConvaeError(
                f"{files['x_' + split]}: expected (N, H, W) images with N labels, got {x.shape}, {y.shape}"
            )
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(arrays["x_train"][:, None]),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=np.ascontiguousarray(arrays["x_test"][:, None]),
        y_test=arrays["y_test"].astype(np.int64),
        classes=list(IDX_SOURCES[name]["classes"]),
    )


# ----------------------------------------------------------------------------- other sources


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    return Dataset("digits", x, digits.target.astype(np.int64), classes=[str(i) for i in range(10)])


def from_python(data: object, spatial_dims: int | None = None, labels: bool = True) -> Dataset:
    """A dataset from a NumPy array, a tensor, or a ``torch.utils.data.Dataset``, by the rules of
    :func:`as_samples`.

    A map-style Dataset is not read here: its rows are read when training asks for them
    (:class:`~convae.data.torchdata.DatasetRows`); its labels are its ``targets``, or, when
    ``labels`` are wanted and its items are ``(sample, label)`` pairs, read in one pass. An
    ``IterableDataset`` is read once into a temporary file (:func:`~convae.data.torchdata.spool`).
    """
    import torch.utils.data

    if isinstance(data, torch.utils.data.IterableDataset):
        from convae.data.torchdata import spool

        rows, y = spool(data, spatial_dims)
        return Dataset(PYTHON_SOURCE, rows, y if labels else None)
    if isinstance(data, torch.utils.data.Dataset):
        from convae.data.torchdata import DatasetRows

        rows = DatasetRows(data, spatial_dims)
        y = rows.labels() if labels or getattr(data, "targets", None) is not None else None
        return Dataset(PYTHON_SOURCE, rows, y)
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    if not isinstance(data, np.ndarray):
        raise ConvaeError(f"data must be a source name, an array, a tensor or a Dataset, not {type(data).__name__}")
    return Dataset(PYTHON_SOURCE, as_samples(data, "the array", spatial_dims), None)


def _labels(raw: np.ndarray, path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels as they are; string labels become indices into their sorted names."""
    if raw.ndim != 1:
        raise ConvaeError(f"{path}: labels must be one per sample (1-D), got shape {raw.shape}")
    if np.issubdtype(raw.dtype, np.integer):
        return raw.astype(np.int64), None
    if raw.dtype.kind in "US":
        classes, index = np.unique(raw.astype(str), return_inverse=True)
        return index.astype(np.int64), [str(c) for c in classes]
    raise ConvaeError(f"{path}: labels must be integers or strings, not dtype {raw.dtype}")


def load_npy(path: str, spatial_dims: int | None = None) -> Dataset:
    p = Path(path)
    if not p.is_file():
        raise ConvaeError(f"{p}: no such file")
    labels = classes = None
    try:
        # A .npy file is read in place (its header through a memory map, its rows by FileArray),
        # so it may exceed memory.
        loaded = np.load(p, allow_pickle=False, mmap_mode="r" if p.suffix == ".npy" else None)
        if isinstance(loaded, np.memmap) and loaded.flags.c_contiguous:
            loaded = FileArray.open(str(p), loaded)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                keys = list(loaded.keys())
                if not keys:
                    raise ConvaeError(f"{p}: the .npz file holds no arrays")
                xkey = next((k for k in ("x", "images", "data", "X") if k in keys), keys[0])
                x = loaded[xkey]
                ykey = next((k for k in ("y", "labels", "targets") if k in keys), None)
                if ykey:
                    labels, classes = _labels(loaded[ykey], p)
        else:
            x = loaded
    except ConvaeError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "allow_pickle" in reason:
            reason = "it holds Python objects, not numbers"
        raise ConvaeError(f"{p}: cannot read array file ({reason})") from None
    x = as_samples(x, str(p), spatial_dims)
    if labels is not None and len(labels) != len(x):
        raise ConvaeError(f"{p}: {len(labels)} labels for {len(x)} samples")
    st = p.stat()
    return Dataset(p.stem, x, labels, classes=classes, stamp=f"{st.st_size}:{st.st_mtime_ns}")


def load_folder(
    path: str, channels: int | None = None, image_size: Sequence[int] | None = None, cache_dir: str | None = None
) -> Dataset:
    f, stamp = cache.load_folder(path, channels, image_size, cache_dir)
    files, test_files = f.files
    return Dataset(
        f.name, f.x_train, f.y_train, f.x_test, f.y_test, f.classes, stamp, files=files, test_files=test_files
    )


SOURCES = ("fashion-mnist", "mnist", "digits", "folder:PATH", "npy:PATH", "mvtec:PATH")
PYTHON_SOURCE = "python"  # the data of a run trained by convae.fit on an array, a tensor or a Dataset


def load(
    source: str,
    *,
    data_dir: str | None = None,
    channels: int | None = None,
    image_size: Sequence[int] | None = None,
    spatial_dims: int | None = None,
    cache_dir: str | None = None,
    download: bool = True,
) -> Dataset:
    """Load a dataset by its ``--data`` name (see the module docstring)."""
    if source == PYTHON_SOURCE:
        raise ConvaeError("this run was trained on data passed from Python; give the data to use (--data)")
    if source in IDX_SOURCES:
        return load_idx_dataset(source, data_dir, download)
    if source == "digits":
        return load_digits()
    kind, sep, path = source.partition(":")
    if sep and kind == "folder":
        return load_folder(path, channels, image_size, cache_dir)
    if sep and kind == "npy":
        return load_npy(path, spatial_dims)
    if sep and kind == "mvtec":
        from convae.data.mvtec import load_mvtec

        m = load_mvtec(path, channels, image_size)
        return Dataset(m.name, m.x_train, None, m.x_test, m.y_test, m.classes, masks=m.masks, test_files=m.test_files)
    raise ConvaeError(f"unknown dataset '{source}' (known: {', '.join(SOURCES)})")


def load_for(config: Any, source: str | None = None) -> Dataset:
    """The data a config (a ``TrainConfig``) describes, loaded as its run loads it (channels, size,
    axes, cache); ``source`` another ``--data`` source read the same way."""
    return load(
        config.data if source is None else source,
        data_dir=config.data_dir,
        channels=config.channels,
        image_size=config.image_size,
        spatial_dims=config.spatial_dims,
        cache_dir=config.cache_dir,
    )


def split_validation(n: int, val_fraction: float, seed: int, minimum: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): a random split fixed by the seed."""
    if not 0 <= val_fraction < 1:
        raise ConvaeError(f"val_fraction must be in [0, 1), not {val_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(round(n * val_fraction), minimum if val_fraction > 0 else 0), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


@dataclass(frozen=True)
class Splits:
    """Indices into a dataset's training array: what trains, what validates, and what is held out
    for testing (empty when the source has a test split of its own)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def run_splits(dataset: Dataset, config) -> Splits:
    """A run's splits of its training array (``config``: a TrainConfig).

    A source without a test split has one held out first, seeded, from all its samples, so it keeps
    the classes that ``exclude_classes`` leaves out of training, or all but ``normal_class`` (the
    anomalies to find). What
    remains, less those classes, is split into training and validation as
    :func:`split_validation` splits it, so without a test split and with no class left out the
    validation split is the one runs have always had.
    """
    n, y, excluded = len(dataset.x_train), dataset.y_train, config.exclude_classes
    rest, test = np.arange(n), np.arange(0)
    if dataset.x_test is None and config.test_fraction > 0:
        if n < 3:
            raise ConvaeError(f"{n} samples cannot be split into training, validation and test samples")
        order = np.random.default_rng([config.seed, 7]).permutation(n)  # apart from the seed's other draws
        n_test = min(max(round(n * config.test_fraction), 1), n - 2)
        rest, test = np.sort(order[n_test:]), np.sort(order[:n_test])
    normal = config.normal_class
    if (excluded or normal is not None) and y is None:
        raise ConvaeError(f"{dataset.name} has no labels, so no classes can be left out")
    if normal is not None:
        if not (y == normal).any():
            names = f" ({', '.join(dataset.classes)})" if dataset.classes else ""
            raise ConvaeError(f"--normal-class {normal} does not occur in {dataset.name}{names}")
        rest = rest[y[rest] == normal]
        excluded = None
    if excluded:
        rest = rest[~np.isin(y[rest], list(excluded))]
        if len(rest) < 2:
            raise ConvaeError(f"leaving out classes {list(excluded)} leaves too little training data ({len(rest)})")
    train, val = split_validation(len(rest), config.val_fraction, config.seed)
    return Splits(rest[train], rest[val], test)
