"""Folders in MVTec AD's layout -> training images, test images with labels, and defect masks.

::

    PATH/train/good/*.png                    normal images: the training split
    PATH/test/good/*.png                     normal test images (no masks)
    PATH/test/<type>/*.png                   defective test images, one folder per defect type
    PATH/ground_truth/<type>/<name>_mask.png where each defect is (non-zero)

Test labels are 0 for ``good`` and 1, 2, ... for the defect types in sorted
order (the dataset's classes name them). Masks come as uint8 0/1, shaped as
the images (resized by nearest neighbour when ``--image-size`` resizes the
images). Grey and RGB, any size (``--image-size`` when sizes differ).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convae.data.images import IMAGE_SUFFIXES, Listing, decode_all, image_mode, resize_crop
from convae.errors import ConvaeError

GOOD = "good"


@dataclass
class Inspection:
    name: str
    x_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    masks: np.ndarray  # (N_test, 1, H, W) uint8, 1 where a defect is
    classes: list[str]
    test_files: list[Path]


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def _mask_of(root: Path, image: Path) -> Path:
    return root / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"


def load_mvtec(path: str, channels: int | None = None, image_size: Sequence[int] | None = None) -> Inspection:
    root = Path(path)
    if not root.is_dir():
        raise ConvaeError(f"{root}: no such folder")
    good = root / "train" / GOOD
    if not good.is_dir() or not _images(good):
        raise ConvaeError(
            f"{root}: no images in train/good; MVTec AD's layout is train/good, test/TYPE, ground_truth/TYPE"
        )
    test_root = root / "test"
    types = sorted(d.name for d in test_root.iterdir() if d.is_dir() and _images(d)) if test_root.is_dir() else []
    if not types:
        raise ConvaeError(f"{root}: no images in test/TYPE folders")
    classes = [GOOD] + [t for t in types if t != GOOD]
    test_files: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        files = _images(test_root / name) if (test_root / name).is_dir() else []
        test_files += files
        labels += [k] * len(files)
    for f in test_files:
        if f.parent.name == GOOD:
            continue
        if not (root / "ground_truth" / f.parent.name).is_dir():
            raise ConvaeError(
                f"{root / 'ground_truth' / f.parent.name}: no such folder: defect type {f.parent.name!r} has no masks"
            )
        if not _mask_of(root, f).is_file():
            raise ConvaeError(f"{_mask_of(root, f)}: no such file: the mask of {f}")
    listing = Listing(root, [_images(good), test_files], None, None)
    mode = image_mode(listing, channels, image_size)
    x_train = decode_all(listing.groups[0], mode, image_size)
    x_test = decode_all(test_files, mode, image_size)
    masks = np.zeros((len(test_files), 1, *x_test.shape[2:]), np.uint8)
    for i, f in enumerate(test_files):
        if f.parent.name != GOOD:
            masks[i, 0] = _read_mask(_mask_of(root, f), f, image_size)
    return Inspection(root.name, x_train, x_test, np.asarray(labels, np.int64), masks, classes, test_files)


def _read_mask(path: Path, image: Path, image_size: Sequence[int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as img:
            expected = img.size
        with Image.open(path) as m:
            if m.size != expected:
                raise ConvaeError(
                    f"{path}: the mask is {m.size[0]}x{m.size[1]} pixels, its image {expected[0]}x{expected[1]}"
                )
            m = m.convert("L")
            if image_size is not None:
                m = resize_crop(m, (int(image_size[0]), int(image_size[-1])), Image.Resampling.NEAREST)
            return (np.asarray(m) > 0).astype(np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ConvaeError(f"{path}: cannot read mask ({err})") from None
