"""convae.data.torchdata: a torch Dataset read on demand, an IterableDataset spooled, fit() on both."""

import numpy as np
import pytest
import torch
import torch.utils.data
from helpers import blobs
from PIL import Image

import convae
from convae.data import from_python
from convae.data.preprocess import Normalizer, scan
from convae.data.rows import FileArray
from convae.data.torchdata import DatasetRows, spool
from convae.errors import ConvaeError

ARCH = "conv(4,3,stride=2) relu dense(4)"


class PNGs(torch.utils.data.Dataset):
    """Files decoded on demand, as users hold images that do not fit in memory; counts its reads."""

    def __init__(self, paths, labels=None):
        self.paths, self.labels, self.reads = paths, labels, 0

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        self.reads += 1
        image = torch.from_numpy(np.array(Image.open(self.paths[i])))
        return image if self.labels is None else (image, self.labels[i])


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, x, labels=None):
        self.x, self.labels = x, labels

    def __iter__(self):
        for i, image in enumerate(self.x):
            yield torch.from_numpy(image) if self.labels is None else (torch.from_numpy(image), int(self.labels[i]))


@pytest.fixture
def images(tmp_path):
    x = blobs(48)[:, 0]  # (48, 8, 8) uint8
    paths = []
    for i, image in enumerate(x):
        paths.append(tmp_path / f"{i:03d}.png")
        Image.fromarray(image).save(paths[-1])
    return x, paths


def test_rows_are_read_on_demand_and_equal_the_images(images):
    x, paths = images
    ds = PNGs(paths)
    rows = DatasetRows(ds, workers=0)
    assert ds.reads == 1  # item 0 gave the shape and type: nothing else was read
    assert rows.shape == (48, 1, 8, 8) and rows.dtype == np.uint8 and rows.nbytes == x.nbytes
    assert np.array_equal(rows[[5, 2, 47]], x[[5, 2, 47], None]) and np.array_equal(rows[-1], x[-1, None])
    assert np.array_equal(rows[3:6], x[3:6, None])
    assert np.array_equal(np.asarray(rows), x[:, None])
    with pytest.raises(IndexError):
        rows.read(np.array([48]))
    for workers in (0, 2):  # a scan in blocks, in order, whether or not DataLoader workers decode them
        blocks = list(DatasetRows(ds, workers=workers).blocks(chunk_bytes=10 * 64))
        assert len(blocks) == 5 and np.array_equal(np.concatenate(blocks), x[:, None])


def test_statistics_from_blocks_equal_the_resident_arrays(images):
    x, paths = images
    rows = DatasetRows(PNGs(paths), workers=2)
    idx = np.arange(0, 48, 3)
    for kind in ("standardize", "zca"):
        streamed = Normalizer(kind).fit(rows, idx)
        resident = Normalizer(kind).fit(x[:, None], idx)
        a, b = streamed.to_dict()["state"], resident.to_dict()["state"]
        assert a.keys() == b.keys()
        for key, value in b.items():
            assert torch.allclose(torch.as_tensor(a[key]), torch.as_tensor(value), atol=1e-5), (kind, key)
    stats = scan(rows, idx, covariance=False)
    assert np.allclose((stats.low, stats.high), (x[idx].min() / 255, x[idx].max() / 255))


def test_zca_from_one_scan_whitens_the_data():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(16, 16))
    x = (rng.normal(size=(400, 16)) @ mix).astype(np.float32).reshape(400, 1, 4, 4)
    normalizer = Normalizer("zca", epsilon=1e-6).fit(x, np.arange(400))  # no shrinkage: white exactly
    white = normalizer.transform(torch.from_numpy(x)).reshape(400, 16).double().numpy()
    assert np.allclose(np.cov(white, rowvar=False), np.eye(16), atol=0.01)


def test_a_sample_of_another_shape_is_one_line_naming_its_item(images, tmp_path):
    _, paths = images
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(paths[7])
    rows = DatasetRows(PNGs(paths), workers=2)
    with pytest.raises(ConvaeError, match=r"^dataset item 7 is uint8 \(1, 9, 8\), item 0 was uint8 \(1, 8, 8\)"):
        list(rows.blocks(chunk_bytes=64 * 4))
    with pytest.raises(ConvaeError, match="dataset item 7"):  # and in training, from a streaming worker
        convae.fit(PNGs(paths), arch=ARCH, epochs=1, placement="stream", out=str(tmp_path / "run"), quiet=True)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConvaeError, match="^dataset item 7"):
        spool(Stream([np.array(Image.open(p)) for p in paths]))


def _weights(run):
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fit_on_a_dataset_streamed_trains_the_run_the_array_trains(images, tmp_path):
    x, paths = images
    settings = dict(arch=ARCH, epochs=2, batch_size=8, quiet=True)
    resident = convae.fit(x, out=str(tmp_path / "array"), **settings)
    ds = PNGs(paths)
    streamed = convae.fit(ds, placement="stream", out=str(tmp_path / "dataset"), **settings)
    assert _same(_weights(streamed), _weights(resident))
    # In this process: the statistics' scan and validation; the training batches came from workers
    # (whose reads are counted in their copies of the Dataset).
    assert ds.reads < 2 * len(x)
    spooled = convae.fit(Stream(x), out=str(tmp_path / "iterable"), **settings)
    assert _same(_weights(spooled), _weights(resident))


def test_a_dataset_run_interrupted_resumes_to_the_run_never_interrupted(images, tmp_path):
    _, paths = images
    settings = dict(arch=ARCH, epochs=3, batch_size=8, placement="stream", quiet=True)
    straight = convae.fit(PNGs(paths), out=str(tmp_path / "straight"), **settings)

    def stop(metrics):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convae.fit(PNGs(paths), out=str(tmp_path / "run"), on_epoch=stop, **settings)
    assert (tmp_path / "run" / "last.pt").exists()
    with pytest.raises(ConvaeError, match="only epochs and max_steps"):
        convae.fit(PNGs(paths), resume=tmp_path / "run", arch="conv(8,3) dense(2)")
    resumed = convae.fit(PNGs(paths), resume=tmp_path / "run")
    assert _same(_weights(resumed), _weights(straight))


def test_labels_come_from_targets_or_pairs_and_choose_the_normal_class(images, tmp_path):
    x, paths = images
    y = np.arange(48) % 3
    pairs = PNGs(paths, labels=y.tolist())
    assert from_python(pairs, labels=False).y_train is None and pairs.reads == 1  # no label pass unless asked
    assert np.array_equal(from_python(pairs).y_train, y)
    with_targets = PNGs(paths)
    with_targets.targets = y.tolist()  # as torchvision's datasets keep them: no pass over the items
    assert np.array_equal(from_python(with_targets, labels=False).y_train, y) and with_targets.reads == 1
    spooled = from_python(Stream(x, y))
    assert isinstance(spooled.x_train, FileArray) and np.array_equal(spooled.y_train, y)
    run = convae.fit(pairs, arch=ARCH, epochs=1, normal_class=1, out=str(tmp_path / "one"), quiet=True)
    assert run.config.normal_class == 1
