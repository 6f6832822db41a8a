import os
import pickle

import numpy as np
import pytest

from convae.data.rows import FileArray
from convae.errors import ConvaeError


def _file_array(tmp_path, x):
    path = tmp_path / "x.npy"
    np.save(path, x)
    return FileArray.open(str(path), np.load(path, mmap_mode="r")), path


def test_rows_come_back_in_the_order_asked_whatever_their_order_in_the_file(tmp_path):
    x = np.arange(20 * 3 * 2, dtype=np.float32).reshape(20, 3, 2)
    a, _ = _file_array(tmp_path, x)
    assert len(a) == 20 and a.shape == (20, 3, 2) and a.ndim == 3 and a.nbytes == x.nbytes
    for idx in ([3, 4, 5, 6], [9, 1, 2, 8, 0], [7, 7, 2], [19], [-1, 0]):
        assert np.array_equal(a[np.array(idx)], x[idx]), idx
    assert np.array_equal(a[2:9:3], x[2:9:3]) and np.array_equal(a[4], x[4])
    assert np.array_equal(a[x[:, 0, 0] > 50], x[x[:, 0, 0] > 50])
    assert np.array_equal(np.asarray(a), x) and a[np.array([], dtype=int)].shape == (0, 3, 2)
    assert np.array_equal(np.concatenate(list(a.blocks(chunk_bytes=50))), x)  # 2 rows a block
    with pytest.raises(IndexError):
        a[np.array([20])]


def test_a_file_array_pickles_without_its_descriptor_and_reads_again(tmp_path):
    a, _ = _file_array(tmp_path, np.arange(12, dtype=np.uint8).reshape(4, 3))
    a[[0]]  # opens the file
    b = pickle.loads(pickle.dumps(a))
    assert b._fd is None and np.array_equal(b[[3, 1]], a[[3, 1]])
    assert a.with_shape((4, 1, 3))[[2]].shape == (1, 1, 3)


def test_a_truncated_or_vanished_file_is_one_line_naming_it(tmp_path):
    a, path = _file_array(tmp_path, np.zeros((10, 100), np.uint8))
    assert a.changed() is None
    os.truncate(path, os.path.getsize(path) - 300)
    with pytest.raises(ConvaeError, match=r"x.npy: the file ended early; was it truncated"):
        a[[9]]
    assert "changed" in a.changed()
    path.unlink()
    assert a.changed().endswith("x.npy vanished")
    fresh = FileArray(str(path), 128, (10, 100), np.dtype(np.uint8))
    with pytest.raises(ConvaeError, match="cannot read the data file .*did it vanish"):
        fresh[[0]]
