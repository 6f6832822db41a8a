"""Folders of image files -> uint8 arrays (N, C, H, W), decoded one file at a time.

Headers are read first (modes and sizes, no pixels), then each file is decoded,
converted and resized straight into one preallocated array, so memory holds the
resized images, never the originals. 16-bit grey images are scaled to 8 bits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convae.errors import ConvaeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Folder:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: list[str] | None
    files: tuple[list[Path] | None, list[Path] | None] = (None, None)  # of the training file and the test split


def too_large(path: Path | str) -> str:
    from PIL import Image

    return f"{path}: the image claims more pixels than Pillow's safety limit ({Image.MAX_IMAGE_PIXELS:,}); not read"


def resize_crop(image, size: tuple[int, int], resample=None):
    """Resize so the image covers ``size`` (H, W), then crop the centre (bilinear unless ``resample``)."""
    from PIL import Image

    h, w = size
    scale = max(h / image.height, w / image.width)
    new = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
    image = image.resize(new, Image.Resampling.BILINEAR if resample is None else resample)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


_GREY_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "F")


def decode_image(path: Path | str, mode: str, image_size: Sequence[int] | None = None) -> np.ndarray:
    """One image file as (C, H, W) uint8 in ``mode`` ("L" or "RGB"), converted and resized at once, so
    that no decoded original outlives its own turn (memory stays that of the resized images). The one
    decoder: folders, MVTec sets and the images given to a trained run all come through it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode.startswith("I") and mode == "L":  # 16-bit grey: scaled to 8 bits, not clipped
                img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
            img = img.convert(mode)
            if image_size is not None:
                img = resize_crop(img, (int(image_size[0]), int(image_size[-1])))
            a = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError:
        raise ConvaeError(too_large(path)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ConvaeError(f"{path}: cannot read image ({err})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode_all(
    files: list[Path], mode: str, image_size: Sequence[int] | None, make_out: Callable[[tuple], Any] | None = None
) -> Any:
    """Every file decoded into one preallocated uint8 array (no list of arrays beside it), on every
    core (Pillow decodes and resizes outside the GIL), with a progress bar on a terminal for many files.
    ``make_out(shape)`` gives where the images go (``out[i] = image``; a file, say); by default an array."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    first = decode_image(files[0], mode, image_size)
    shape = (len(files), *first.shape)
    out = make_out(shape) if make_out is not None else np.empty(shape, np.uint8)
    out[0] = first

    def fill(i: int) -> None:
        out[i] = decode_image(files[i], mode, image_size)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        done = pool.map(fill, range(1, len(files)))  # in order: the first failure is the first bad file
        bar = tqdm(
            done, total=len(files) - 1, unit="image", desc="decoding", disable=None if len(files) > 2000 else True
        )
        for _ in bar:
            pass
    return out


def image_channels(path: Path | str) -> int:
    """1 for a grey image (any bit depth), 3 otherwise, from the file's header."""
    ((mode, _),) = _headers([Path(path)])
    return 1 if mode in _GREY_MODES else 3


def _headers(files: list[Path]) -> list[tuple[str, tuple[int, int]]]:
    """(mode, size) of each file, from its header alone (no pixels decoded)."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in files:
        try:
            with Image.open(f) as img:
                out.append((img.mode, img.size))
        except Image.DecompressionBombError:
            raise ConvaeError(too_large(f)) from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ConvaeError(f"{f}: cannot read image ({err})") from None
    return out


def _image_files(root: Path) -> list[Path]:
    return sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


@dataclass
class Listing:
    """The image files of a folder, by split (``train/`` and ``test/``, or all of it), with labels."""

    root: Path
    groups: list[list[Path]]
    labels: list[np.ndarray] | None
    classes: list[str] | None

    def manifest(self) -> list[tuple[str, int, int]]:
        """(path below the root, size, modification time) of every file: what a cache of it must match."""
        out = []
        for f in (f for group in self.groups for f in group):
            st = f.stat()
            out.append((f.relative_to(self.root).as_posix(), st.st_size, st.st_mtime_ns))
        return out


def list_folder(path: str) -> Listing:
    """The images found recursively below ``path``; subfolder names are the labels when every image
    sits in one. With ``train/`` and ``test/`` subfolders, those are the splits (labels below each)."""
    root = Path(path)
    if not root.is_dir():
        raise ConvaeError(f"{root}: no such folder")
    split_roots = [root / "train", root / "test"]
    splits = all(d.is_dir() and _image_files(d) for d in split_roots)
    groups = [_image_files(d) for d in split_roots] if splits else [_image_files(root)]
    if not groups[0]:
        raise ConvaeError(f"{root}: no PNG, JPEG, BMP or TIFF images found")
    bases = split_roots if splits else [root]
    parents = [[f.parent.relative_to(base).parts for f in files] for base, files in zip(bases, groups)]
    labels = classes = None
    if all(len(p) >= 1 for group in parents for p in group):
        classes = sorted({p[0] for group in parents for p in group})
        index = {c: i for i, c in enumerate(classes)}
        labels = [np.array([index[p[0]] for p in group], dtype=np.int64) for group in parents]
    return Listing(root, groups, labels, classes)


def image_mode(listing: Listing, channels: int | None, image_size: Sequence[int] | None) -> str:
    """The Pillow mode the images are decoded in ("L" or "RGB"), from their headers, which also show
    whether they need ``image_size`` (images of several sizes)."""
    root, groups = listing.root, listing.groups
    headers = [_headers(files) for files in groups]
    every = [h for group in headers for h in group]
    if channels is None:
        channels = 1 if all(m in _GREY_MODES for m, _ in every) else 3
    if channels not in (1, 3):
        raise ConvaeError(f"channels must be 1 or 3, not {channels}")
    if image_size is None:
        sizes = sorted({size for _, size in every})
        if len(sizes) > 1:
            names = [f for files in groups for f in files]
            first = next(f for f, (_, size) in zip(names, every) if size == sizes[0])
            other = next(f for f, (_, size) in zip(names, every) if size == sizes[1])
            (a, b) = sizes[:2]
            raise ConvaeError(
                f"{root}: images of different sizes ({first.name} is {a[0]}x{a[1]}, {other.name} is {b[0]}x{b[1]}); "
                "pass --image-size H,W"
            )
    return "L" if channels == 1 else "RGB"


def read_listing(listing: Listing, channels: int | None = None, image_size: Sequence[int] | None = None) -> Folder:
    """A folder's images, as :func:`list_folder` found them, decoded into memory."""
    mode = image_mode(listing, channels, image_size)
    return folder_of(listing, [decode_all(files, mode, image_size) for files in listing.groups])


def folder_of(listing: Listing, arrays: list) -> Folder:
    labels, split = listing.labels, len(listing.groups) == 2
    return Folder(
        listing.root.name,
        arrays[0],
        labels[0] if labels else None,
        arrays[1] if split else None,
        labels[1] if split and labels else None,
        listing.classes,
        (listing.groups[0], listing.groups[1] if split else None),
    )
