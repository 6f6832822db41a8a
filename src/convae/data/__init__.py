"""Samples in: the wing's face, re-exporting :mod:`~convae.data.sources` and
:mod:`~convae.data.samples` (NumPy only at import).

Its modules: ``--data`` sources, image folders and their cache, ``.npy`` rows read in place, MVTec
AD's layout, synthetic inspection sets, and the preprocessing fitted on them
(:mod:`~convae.data.preprocess`, torch)."""

from convae.data.samples import as_samples, floats
from convae.data.sources import (
    PYTHON_SOURCE,
    SOURCES,
    Dataset,
    Splits,
    download_idx,
    from_python,
    load,
    load_for,
    read_idx,
    run_splits,
    split_validation,
)

__all__ = [
    "PYTHON_SOURCE",
    "SOURCES",
    "Dataset",
    "Splits",
    "as_samples",
    "download_idx",
    "floats",
    "from_python",
    "load",
    "load_for",
    "read_idx",
    "run_splits",
    "split_validation",
]
