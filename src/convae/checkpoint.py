"""Checkpoints: a plain mapping written atomically, read without running code.

``torch.load(weights_only=True)`` refuses anything but tensors and plain
containers, so loading a file never executes code from it. Writes go to a
temporary file in the same folder and are renamed into place, so a process
killed at any moment leaves either the old file or the new one. Inside
:func:`all_or_nothing` the renames wait for the end of the block, so a command
that writes several files and fails half-way leaves none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from convae.errors import ConvaeError

FORMAT = "convae-checkpoint"
VERSION = 1
KEYS = {
    "format",
    "version",
    "model_config",
    "model",
    "optimizer",
    "scheduler",
    "normalizer",
    "train_config",
    "epoch",
    "step",
    "best_val",
    "bad_epochs",
    "metrics",
}
OPTIONAL_KEYS = {"head"}  # a contrastive term's projection head: only runs with one have it


def load_weights(module: torch.nn.Module, weights: dict[str, Any], source: str | Path) -> None:
    """``module.load_state_dict(weights)``, with a mismatch as one line naming ``source`` and the first
    tensor that does not fit (PyTorch lists every one, dozens of lines)."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, ValueError, KeyError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines[1:]), lines[0] if lines else type(err).__name__)
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise ConvaeError(f"{source}: the weights do not fit the model: {detail[:300]}{more}") from None


def check_output(path: str | Path, folder: bool = False) -> Path:
    """Refuse, before anything is computed or written, an output path that cannot be written:
    a file where a folder is wanted or the other way round, a parent that is a file, a parent
    that is not writable. Missing parent folders are fine: writing creates them."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        have, want = ("file", "folder") if folder else ("folder", "file")
        raise ConvaeError(f"{path}: is a {have}; give a {want} name")
    parent = path if folder and path.exists() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConvaeError(f"{path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConvaeError(f"{path}: cannot write into {parent} (permission denied)")
    return path


def _write_error(path: Path, err: OSError) -> ConvaeError:
    return ConvaeError(f"{path}: cannot write ({err.strerror or type(err).__name__})")


class _Staged:
    """The files and folders of an :func:`all_or_nothing` block so far."""

    def __init__(self) -> None:
        self.renames: list[tuple[str, Path]] = []  # (temporary file, its final path), in writing order
        self.folders: list[Path] = []  # folders the block created, outermost first

    def mkdir(self, path: Path) -> None:
        missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
        path.mkdir(parents=True, exist_ok=True)
        self.folders += missing


_staged: _Staged | None = None


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Every file :func:`atomic_write` writes inside the block waits in its temporary file and is
    renamed into place when the block ends without an error; on an error (or Ctrl-C) the temporary
    files and the folders the block created are removed, so the block has written nothing. Renames
    are all that is left to the end, and a rename within a folder does not run out of space."""
    global _staged
    if _staged is not None:  # nested: the outer block decides
        yield
        return
    _staged = staged = _Staged()
    try:
        yield
    except BaseException:
        for tmp, _ in staged.renames:
            Path(tmp).unlink(missing_ok=True)
        for folder in reversed(staged.folders):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: a folder the user filled meanwhile stays
        raise
    else:
        for tmp, path in staged.renames:
            try:
                os.replace(tmp, path)
            except OSError as err:
                raise _write_error(path, err) from None
    finally:
        _staged = None


def _mkdir(path: Path) -> None:
    if _staged is not None:
        _staged.mkdir(path)
    else:
        path.mkdir(parents=True, exist_ok=True)


def make_folder(path: str | Path) -> Path:
    path = Path(path)
    try:
        _mkdir(path)
    except OSError as err:
        raise _write_error(path, err) from None
    return path


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(file_object)`` on a temp file next to ``path``, then rename it into place (at the
    end of an :func:`all_or_nothing` block, inside one).

    A path that cannot be written is a one-line ``ConvaeError``; nothing is left behind."""
    path = Path(path)
    try:
        _mkdir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _write_error(path, err) from None
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide run files from other users
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if _staged is not None:
            _staged.renames.append((tmp, path))
        else:
            os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=2, sort_keys=False) + "\n").encode()))


def save(path: str | Path, state: dict[str, Any]) -> None:
    extra = set(state) - KEYS - OPTIONAL_KEYS
    if extra:
        raise ValueError(f"unexpected checkpoint keys: {sorted(extra)}")
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint; a foreign or damaged file gives a one-line ConvaeError."""
    path = Path(path)
    if not path.is_file():
        raise ConvaeError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConvaeError(f"{path}: not a readable convae checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConvaeError(f"{path}: not a convae checkpoint")
    if state.get("version") != VERSION:
        raise ConvaeError(
            f"{path}: checkpoint version {state.get('version')} is not supported (this convae reads {VERSION})"
        )
    leftover = set(state) - KEYS - OPTIONAL_KEYS
    missing = KEYS - set(state)
    if leftover or missing:
        raise ConvaeError(
            f"{path}: checkpoint keys do not match (unexpected {sorted(leftover)}, missing {sorted(missing)})"
        )
    return state
