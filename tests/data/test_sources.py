import gzip

import numpy as np
import pytest
from helpers import blobs, write_fake_mnist, write_idx
from PIL import Image

from convae.data import sources as data
from convae.data.samples import floats
from convae.errors import ConvaeError


def test_read_idx_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (True, False):
        path = write_idx(tmp_path / f"a{compress}", array, compress)
        assert np.array_equal(data.read_idx(path), array)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    path = write_idx(tmp_path / "x", np.zeros((4, 5, 5), dtype=np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ConvaeError, match=f"{path}: truncated"):
        data.read_idx(path)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"hello world"))
    with pytest.raises(ConvaeError, match="not an IDX file"):
        data.read_idx(bad)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(b"\0\0\x08\x01" + b"\0\0\0\x09" + b"x" * 9)[:-6])
    with pytest.raises(ConvaeError, match="broken.gz: cannot read IDX file"):
        data.read_idx(broken)


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    env_dir = tmp_path / "env"
    write_fake_mnist(env_dir / "mnist", fill=2)
    monkeypatch.setenv("CONVAE_DATA", str(env_dir))
    write_fake_mnist(tmp_path / "home" / ".cache" / "convae" / "mnist", fill=3)
    given = write_fake_mnist(tmp_path / "given", fill=1)

    def first_pixel(**kwargs):
        ds = data.load("mnist", download=False, **kwargs)
        return int(ds.x_train[0, 0, 0, 0])

    assert first_pixel(data_dir=str(given)) == 1
    assert first_pixel() == 2
    monkeypatch.delenv("CONVAE_DATA")
    assert first_pixel() == 3
    ds = data.load("mnist", download=False)
    assert ds.x_train.shape == (20, 1, 8, 8) and ds.x_test.shape == (10, 1, 8, 8)
    assert ds.y_train.dtype == np.int64 and ds.x_train.dtype == np.uint8  # bytes until used
    assert floats(ds.x_train).dtype == np.float32 and floats(ds.x_train).max() <= 1.0


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CONVAE_DATA", raising=False)
    monkeypatch.setattr(data, "_candidate_dirs", lambda name, d: [tmp_path / "nowhere"])
    with pytest.raises(ConvaeError) as info:
        data.load("fashion-mnist", download=False)
    message = str(info.value)
    assert "nowhere" in message and "apt-get install dataset-fashion-mnist" in message
    assert "\n" not in message


def test_download_verifies_checksums(tmp_path, monkeypatch):
    import hashlib

    source_dir = write_fake_mnist(tmp_path / "mirror")
    md5 = {f.name: hashlib.md5(f.read_bytes()).hexdigest() for f in source_dir.iterdir()}
    monkeypatch.setitem(data.IDX_SOURCES, "mnist", {**data.IDX_SOURCES["mnist"], "md5": md5})
    mirror = source_dir.as_uri() + "/"
    files = data.download_idx("mnist", tmp_path / "dest", mirrors=[mirror])
    assert all(f.is_file() for f in files.values())
    assert not list((tmp_path / "dest").glob("*.part"))
    bad = {k: "0" * 32 for k in md5}
    monkeypatch.setitem(data.IDX_SOURCES, "mnist", {**data.IDX_SOURCES["mnist"], "md5": bad})
    with pytest.raises(ConvaeError, match="checksum mismatch"):
        data.download_idx("mnist", tmp_path / "dest2", mirrors=[mirror])
    assert not list((tmp_path / "dest2").iterdir())


def test_digits_offline():
    ds = data.load("digits")
    assert ds.x_train.shape == (1797, 1, 8, 8)
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    assert ds.x_test is None and len(ds.y_train) == 1797


def _save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_with_labels_and_resize(tmp_path):
    images = blobs(6, size=10)
    for i, img in enumerate(images):
        _save_png(tmp_path / ("cats" if i % 2 else "dogs") / f"{i}.png", img[0])
    ds = data.load(f"folder:{tmp_path}")
    assert ds.x_train.shape == (6, 1, 10, 10)
    assert ds.classes == ["cats", "dogs"] and sorted(ds.y_train.tolist()) == [0, 0, 0, 1, 1, 1]
    rgb = data.load(f"folder:{tmp_path}", channels=3, image_size=(6, 8))
    assert rgb.x_train.shape == (6, 3, 6, 8)


def test_folder_errors(tmp_path):
    with pytest.raises(ConvaeError, match="no PNG, JPEG, BMP or TIFF"):
        data.load(f"folder:{tmp_path}")
    with pytest.raises(ConvaeError, match="no such folder"):
        data.load(f"folder:{tmp_path / 'missing'}")
    _save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    _save_png(tmp_path / "b.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(ConvaeError, match="images of different sizes.*--image-size"):
        data.load(f"folder:{tmp_path}")
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ConvaeError, match="c.png: cannot read image"):
        data.load(f"folder:{tmp_path}", image_size=(4, 4))


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((5, 6, 7), (5, 1, 6, 7)),
        ((5, 3, 6, 7), (5, 3, 6, 7)),
        ((5, 6, 7, 3), (5, 3, 6, 7)),
        ((5, 1, 6, 7), (5, 1, 6, 7)),
    ],
)
def test_npy_layouts(tmp_path, shape, expected):
    path = tmp_path / "a.npy"
    np.save(path, np.full(shape, 255, dtype=np.uint8))
    ds = data.load(f"npy:{path}")
    assert ds.x_train.shape == expected and floats(ds.x_train).max() == pytest.approx(1.0)


def test_npy_floats_kept_and_npz_labels(tmp_path):
    np.save(tmp_path / "f.npy", np.full((3, 4, 4), 7.5, dtype=np.float64))
    assert data.load(f"npy:{tmp_path / 'f.npy'}").x_train.max() == 7.5
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 4, 4), np.uint8), y=np.array([0, 1, 0, 1]))
    assert data.load(f"npy:{tmp_path / 'd.npz'}").y_train.tolist() == [0, 1, 0, 1]


def test_npy_errors(tmp_path):
    np.save(tmp_path / "r.npy", np.zeros((4, 4)))
    with pytest.raises(ConvaeError, match=r"r.npy: expected an array shaped .* got \(4, 4\)"):
        data.load(f"npy:{tmp_path / 'r.npy'}")
    x = np.zeros((4, 4, 4), np.float32)
    x[2, 1, 1] = np.nan
    np.save(tmp_path / "n.npy", x)
    with pytest.raises(ConvaeError, match="NaN or infinite values \\(first in sample 2\\)"):
        data.load(f"npy:{tmp_path / 'n.npy'}")
    with pytest.raises(ConvaeError, match="no such file"):
        data.load(f"npy:{tmp_path / 'missing.npy'}")
    (tmp_path / "t.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ConvaeError, match="t.npy: cannot read array file"):
        data.load(f"npy:{tmp_path / 't.npy'}")


def test_unknown_source():
    with pytest.raises(ConvaeError, match="unknown dataset 'cifar'.*fashion-mnist"):
        data.load("cifar")


def test_validation_split_fixed_by_seed():
    a = data.split_validation(100, 0.2, seed=1)
    b = data.split_validation(100, 0.2, seed=1)
    c = data.split_validation(100, 0.2, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    assert len(a[1]) == 20 and len(np.intersect1d(*a)) == 0


def test_a_folder_with_train_and_test_subfolders_has_those_splits(tmp_path):
    from PIL import Image

    for split, n in (("train", 4), ("test", 2)):
        for label in ("ok", "bad"):
            folder = tmp_path / "set" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((6, 5), 40 * i, np.uint8)).save(folder / f"{i}.png")
    ds = data.load(f"folder:{tmp_path / 'set'}")
    assert ds.x_train.shape == (8, 1, 6, 5) and ds.x_test.shape == (4, 1, 6, 5)
    assert ds.classes == ["bad", "ok"] and ds.y_test.tolist() == [0, 0, 1, 1]
    # each sample's file, in the arrays' order (score's CSV names them)
    assert [f.relative_to(tmp_path / "set").as_posix() for f in ds.test_files] == [
        "test/bad/0.png",
        "test/bad/1.png",
        "test/ok/0.png",
        "test/ok/1.png",
    ]
    assert len(ds.files) == 8 and all(f.parent.parent.name == "train" for f in ds.files)
    for i in (0, 3, 6):
        assert np.array_equal(ds.x_train[i], np.asarray(Image.open(ds.files[i]))[None])


def test_16_bit_grey_tiffs_are_scaled_to_8_bits_not_clipped(tmp_path):
    from PIL import Image

    folder = tmp_path / "tiffs"
    folder.mkdir()
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(folder / "white.tif")
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(folder / "grey.tif")
    ds = data.load(f"folder:{folder}")
    assert sorted(floats(ds.x_train).reshape(2, -1).max(1).tolist()) == pytest.approx([128 / 255, 1.0])


def test_spatial_dims_reads_signals_and_volumes_and_refuses_other_shapes(tmp_path):
    np.save(tmp_path / "sig.npy", np.zeros((5, 2, 301), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros((5, 77), np.float32))
    np.save(tmp_path / "vol.npy", np.zeros((5, 1, 9, 13, 11), np.float32))
    assert data.load(f"npy:{tmp_path / 'sig.npy'}", spatial_dims=1).sample_shape == (2, 301)
    assert data.load(f"npy:{tmp_path / 'sig.npy'}").sample_shape == (1, 2, 301)  # without it: images, as before
    assert data.load(f"npy:{tmp_path / 'flat.npy'}", spatial_dims=1).sample_shape == (1, 77)
    assert data.load(f"npy:{tmp_path / 'vol.npy'}", spatial_dims=3).sample_shape == (1, 9, 13, 11)
    with pytest.raises(ConvaeError, match=r"--spatial-dims 3 takes arrays shaped \(N, C, D, H, W\) or \(N, D, H, W\)"):
        data.load(f"npy:{tmp_path / 'sig.npy'}", spatial_dims=3)
    with pytest.raises(ConvaeError, match="signals and volumes: --spatial-dims 1 or 3"):
        data.load(f"npy:{tmp_path / 'vol.npy'}")


def test_python_data_arrays_tensors_and_datasets(tmp_path):
    import torch

    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8), dtype=np.uint8)
    from_array = data.from_python(images)
    assert from_array.x_train.shape == (6, 1, 8, 8) and from_array.x_train.dtype == np.uint8
    assert np.array_equal(data.from_python(torch.as_tensor(images)).x_train, from_array.x_train)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.as_tensor(images[i]), i % 2

    pairs = data.from_python(Pairs())
    assert np.array_equal(pairs.x_train, from_array.x_train) and pairs.y_train.tolist() == [0, 1, 0, 1, 0, 1]
    single = data.from_python(torch.utils.data.TensorDataset(torch.as_tensor(images)))  # items are 1-tuples
    assert np.array_equal(single.x_train, from_array.x_train) and single.y_train is None
    with pytest.raises(ConvaeError, match="not dict"):
        data.from_python({"x": 1})


def test_a_uint8_npy_is_read_in_place_and_trains_as_the_same_array_in_memory(tmp_path):
    from helpers import blobs

    from convae.config import resolve_config
    from convae.training.train import train

    x = blobs(64)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)  # .npz: read into memory
    from convae.data.rows import FileArray

    mapped = data.load(f"npy:{tmp_path / 'x.npy'}").x_train
    assert isinstance(mapped, FileArray) and mapped.shape == (64, 1, 8, 8)  # on disk, not read
    assert np.array_equal(mapped[[5, 2, 3]], x[[5, 2, 3]])  # blobs are (N, 1, H, W) already
    finals = []
    for name in ("x.npy", "x.npz"):
        settings = dict(data=f"npy:{tmp_path / name}", arch="conv(4,3,stride=2) relu dense(4)", epochs=2)
        out = str(tmp_path / f"run-{name}")
        finals.append(train(resolve_config({**settings, "batch_size": 16, "out": out, "quiet": True}))["final"])
    assert finals[0] == finals[1]


def test_a_source_without_a_test_split_holds_one_out_seeded_with_the_classes_training_leaves_out():
    from convae.config import TrainConfig

    y = np.arange(200) % 4
    ds = data.Dataset("d", np.zeros((200, 1, 2, 2), np.uint8), y)
    config = TrainConfig(test_fraction=0.1, val_fraction=0.2, seed=3)
    s = data.run_splits(ds, config)
    assert len(s.test) == 20 and len(s.val) == 36 and len(s.train) == 144
    assert len(np.unique(np.concatenate([s.train, s.val, s.test]))) == 200  # disjoint, all of them
    assert np.array_equal(data.run_splits(ds, config).test, s.test)  # seeded
    assert not np.array_equal(data.run_splits(ds, TrainConfig(test_fraction=0.1, seed=4)).test, s.test)
    # Without a test split held out, validation is the split runs have always had.
    old = data.run_splits(ds, TrainConfig(test_fraction=0.0, val_fraction=0.2, seed=3))
    assert np.array_equal(old.val, data.split_validation(200, 0.2, 3)[1]) and len(old.test) == 0
    # Classes left out of training stay in the test split: the anomalies to find.
    anomaly = data.run_splits(ds, TrainConfig(test_fraction=0.1, exclude_classes=[2], seed=3))
    assert np.array_equal(anomaly.test, s.test) and 2 in y[anomaly.test]
    assert 2 not in y[anomaly.train] and 2 not in y[anomaly.val]
    # A source with a test split of its own holds nothing out.
    with_test = data.Dataset("d", ds.x_train, y, ds.x_train[:5], y[:5])
    assert len(data.run_splits(with_test, config).test) == 0
