import numpy as np
import pytest
from helpers import blobs
from PIL import Image

from convae import data
from convae.data import cache
from convae.data.rows import FileArray
from convae.errors import ConvaeError


def _folder(root, n=6, size=10):
    for i, img in enumerate(blobs(n, size=size)):
        (root / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(root / ("a" if i % 2 else "b") / f"{i}.png")
    return root


def _count_decoding(monkeypatch):
    calls = []
    real = cache.decode_all
    monkeypatch.setattr(cache, "decode_all", lambda files, *a: calls.append(len(files)) or real(files, *a))
    return calls


def test_a_folder_is_decoded_once_then_read_from_its_cache(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    calls = _count_decoding(monkeypatch)
    where = str(tmp_path / "cache")
    first = data.load(f"folder:{root}", image_size=(8, 8), cache_dir=where)
    again = data.load(f"folder:{root}", image_size=(8, 8), cache_dir=where)
    assert calls == [6] and isinstance(again.x_train, FileArray) and again.x_train.shape == (6, 1, 8, 8)
    assert np.array_equal(np.asarray(first.x_train), np.asarray(again.x_train))
    assert again.classes == ["a", "b"] and again.y_train.tolist() == first.y_train.tolist()
    memory = data.load(f"folder:{root}", image_size=(8, 8), cache_dir="none")
    assert isinstance(memory.x_train, np.ndarray) and np.array_equal(memory.x_train, np.asarray(again.x_train))
    data.load(f"folder:{root}", image_size=(6, 6), cache_dir=where)  # another size: another cache
    assert calls == [6, 6] and len(list((tmp_path / "cache" / "folders").glob("*.lock"))) == 2


def test_a_cache_that_no_longer_matches_its_folder_is_built_again_and_says_so(tmp_path, monkeypatch, capsys):
    root = _folder(tmp_path / "imgs")
    where = str(tmp_path / "cache")
    before = data.load(f"folder:{root}", cache_dir=where)
    calls = _count_decoding(monkeypatch)
    Image.fromarray(blobs(1, size=10)[0, 0]).save(root / "a" / "new.png")
    after = data.load(f"folder:{root}", cache_dir=where)
    assert calls == [7] and after.x_train.shape[0] == 7 and after.stamp != before.stamp
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "changed since it was cached (1 added, 0 removed, 0 changed)" in err


def test_a_corrupt_image_while_caching_names_it_and_leaves_no_cache(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "a" / "zz.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ConvaeError, match=r"zz.png: cannot read image"):
        data.load(f"folder:{root}", image_size=(8, 8), cache_dir=str(tmp_path / "cache"))
    left = [p.name for p in (tmp_path / "cache" / "folders").iterdir() if not p.name.endswith(".lock")]
    assert left == []


def test_train_and_test_subfolders_are_cached_as_two_splits(tmp_path):
    for split in ("train", "test"):
        _folder(tmp_path / "set" / split, n=4)
    for _ in range(2):
        ds = data.load(f"folder:{tmp_path / 'set'}", cache_dir=str(tmp_path / "cache"))
        assert ds.x_train.shape == (4, 1, 10, 10) and ds.x_test.shape == (4, 1, 10, 10)
        assert isinstance(ds.x_test, FileArray) and ds.y_test.tolist() == [0, 0, 1, 1]  # a/1, a/3, b/0, b/2


def test_an_unwritable_cache_folder_is_one_line(tmp_path):
    root = _folder(tmp_path / "imgs", n=2)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConvaeError, match="cannot write the image cache there.*--cache-dir"):
        data.load(f"folder:{root}", cache_dir=str(blocker))
