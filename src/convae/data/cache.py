"""Decoded folders, cached: the resized uint8 images written once as ``.npy`` files, reused after.

A folder's images are decoded the first time a run, ``eval``, ``score`` or
``encode`` asks for them with some channels and size; later ones read the
cache (:class:`~convae.data.rows.FileArray`: row by row, never all of it unless it
fits in memory). A cache lives in ``CACHE_ROOT/folders/<key>``, the key
naming the folder's absolute path, the channels and the size asked for, and
holds ``train.npy`` (``test.npy`` with ``train/``+``test/`` splits) and
``index.json``: every file's path, size and modification time (labels come
from the folder's listing, which is read each time to check the cache). If
the folder no longer matches (files added, removed or changed) the cache is
built again, and the user is told so in one line.
Building takes a lock, so processes started together (torchrun) build it
once; it is written under a temporary name and renamed, so a failed or
interrupted build leaves nothing that looks complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convae.data.images import Folder, Listing, decode_all, folder_of, image_mode, list_folder, read_listing
from convae.data.rows import FileArray
from convae.errors import ConvaeError

VERSION = 1  # of the cache's layout and decoding; a change makes new keys
SPLIT_FILES = ("train.npy", "test.npy")


def cache_root(cache_dir: str | None) -> Path | None:
    """Where caches go: ``cache_dir``, else ``$CONVAE_CACHE``, else ``~/.cache/convae``; None for 'none'."""
    root = cache_dir or os.environ.get("CONVAE_CACHE") or str(Path.home() / ".cache" / "convae")
    return None if root.lower() == "none" else Path(root)


def stamp_of(manifest: list) -> str:
    return hashlib.sha256(json.dumps(manifest).encode()).hexdigest()[:20]


def load_folder(
    path: str, channels: int | None, image_size: Sequence[int] | None, cache_dir: str | None = None
) -> tuple[Folder, str]:
    """A folder's images (from its cache, built when missing or stale) and the stamp of its files."""
    listing = list_folder(path)
    manifest = listing.manifest()
    stamp = stamp_of(manifest)
    root = cache_root(cache_dir)
    if root is None:
        return read_listing(listing, channels, image_size), stamp
    asked = {"folder": str(listing.root.resolve()), "channels": channels, "image_size": image_size, "v": VERSION}
    where = root / "folders" / hashlib.sha256(json.dumps(asked).encode()).hexdigest()[:16]
    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        lock = open(where.with_suffix(".lock"), "w")  # noqa: SIM115 (held through the with below)
    except OSError as err:
        raise ConvaeError(f"{root}: cannot write the image cache there ({err.strerror}); give --cache-dir") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds; the others wait and read what it built
        index = _index(where)
        if index is not None and index["stamp"] != stamp:
            print(
                f"note: {path} changed since it was cached ({_difference(index['files'], manifest)}); "
                "decoding it again",
                file=sys.stderr,
            )
        if index is None or index["stamp"] != stamp:
            _build(where, listing, manifest, stamp, channels, image_size)
        return _open(where, listing), stamp


def _index(where: Path) -> dict | None:
    try:
        index = json.loads((where / "index.json").read_text())
    except (OSError, ValueError):
        return None  # absent or unreadable: built anew
    files = [where / name for name in SPLIT_FILES[: index.get("splits", 0)]]
    return index if files and all(f.is_file() for f in files) else None


def _difference(cached: list, now: list) -> str:
    before = {path: (size, mtime) for path, size, mtime in cached}
    after = {path: (size, mtime) for path, size, mtime in now}
    added, removed = len(after.keys() - before.keys()), len(before.keys() - after.keys())
    changed = sum(before[p] != after[p] for p in after.keys() & before.keys())
    return f"{added} added, {removed} removed, {changed} changed"


class _RowWriter:
    """``out[i] = image`` into a ``.npy`` file, written as it comes: nothing is held in memory."""

    def __init__(self, path: Path, shape: tuple):
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)  # a sparse file
        self.offset, self.row = header.offset, int(np.prod(shape[1:]))
        del header
        self.fd = os.open(path, os.O_WRONLY)

    def __setitem__(self, i: int, image: np.ndarray) -> None:
        os.pwrite(self.fd, np.ascontiguousarray(image).tobytes(), self.offset + i * self.row)

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


def _build(where: Path, listing: Listing, manifest: list, stamp: str, channels, image_size) -> None:
    mode = image_mode(listing, channels, image_size)
    tmp = where.with_name(where.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, files in zip(SPLIT_FILES, listing.groups):
            _write_split(tmp / name, files, mode, image_size)
        index = {
            "stamp": stamp,
            "splits": len(listing.groups),
            "files": manifest,
        }
        (tmp / "index.json").write_text(json.dumps(index))
        shutil.rmtree(where, ignore_errors=True)
        os.replace(tmp, where)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_split(path: Path, files: list[Path], mode: str, image_size) -> None:
    writers: list[_RowWriter] = []

    def open_file(shape: tuple) -> _RowWriter:
        writers.append(_RowWriter(path, shape))
        return writers[-1]

    try:
        decode_all(files, mode, image_size, open_file)
    finally:
        for writer in writers:
            writer.close()


def _open(where: Path, listing: Listing) -> Folder:
    arrays = []
    for name in SPLIT_FILES[: len(listing.groups)]:
        path = where / name
        arrays.append(FileArray.open(str(path), np.load(path, mmap_mode="r")))
    return folder_of(listing, arrays)
