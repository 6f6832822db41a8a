import numpy as np
import pytest
import torch

from convae.cli import main
from convae.errors import ConvaeError


def test_load_gives_encode_decode_on_raw_images(run_dir):
    import convae

    run = convae.load(run_dir)
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    z = run.encode(x)
    assert z.shape == (5, 6)
    assert run.decode(z).shape == (5, 1, 8, 8)
    with pytest.raises(ConvaeError, match=r"expected inputs shaped \(N, 1, 8, 8\)"):
        run.encode(np.zeros((2, 3, 8, 8), np.float32))


def test_commands_on_a_run_take_threads(run_dir, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # recorded, not applied to the test process
    assert main(["eval", str(run_dir), "--json", "--no-probe", "--threads", "1"]) == 0 and calls == [1]
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "c.npy"), "--quiet", "--threads", "2"]) == 0
    assert calls == [1, 2]
    with pytest.raises(SystemExit) as exit_:
        main(["score", str(run_dir), "--threads", "0"])
    assert exit_.value.code == 2 and "--threads: must be a positive integer, not 0" in capsys.readouterr().err


def test_encode_cli_npz_and_npy(run_dir, tmp_path):
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "codes.npz"), "--quiet"]) == 0
    saved = np.load(tmp_path / "codes.npz")
    assert saved["codes"].shape == (120, 6) and saved["labels"].shape == (120,)
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "codes.npy"), "--split", "val", "--quiet"]) == 0
    assert np.load(tmp_path / "codes.npy").shape == (11, 6)  # 10 % of the 108 not held out for testing
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "test.npy"), "--split", "test", "--quiet"]) == 0
    assert np.load(tmp_path / "test.npy").shape == (12, 6)  # test_fraction 0.1 of 120
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "codes.txt")]) == 2


def test_a_run_takes_uint8_images_as_the_loaders_scale_them_and_tensors_give_tensors(run_dir):
    from convae.inference.run import load

    run = load(run_dir)
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    as_floats = run.reconstruct(images.astype(np.float32) / 255)
    np.testing.assert_allclose(run.reconstruct(images), as_floats, atol=1e-6)  # not 255 times off
    out = run.reconstruct(torch.as_tensor(images))
    assert isinstance(out, torch.Tensor) and torch.allclose(out, torch.as_tensor(as_floats), atol=1e-6)
    codes = run.encode(torch.as_tensor(images))
    assert isinstance(codes, torch.Tensor) and isinstance(run.decode(codes), torch.Tensor)
    assert isinstance(run.encode(images), np.ndarray)


def test_encode_decode_and_reconstruct_are_the_model_between_the_normalisation_and_its_inverse(run_dir):
    import convae

    run = convae.load(run_dir)
    x = np.random.default_rng(1).random((6, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        z = run.model.encode(run.normalizer.transform(torch.as_tensor(x)))
        expected = run.normalizer.inverse(run.model.decode(z)).numpy()
    np.testing.assert_allclose(run.encode(x), z.numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(run.decode(z.numpy()), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(run.reconstruct(x), expected, atol=1e-6, rtol=0)
    # The test MSE the run ended with is what reconstructing its held-out split gives.
    from convae.inference.run import dataset_split

    test, _, _ = dataset_split(run, None, "test")
    assert run.final["test_mse"] == pytest.approx(float(((run.reconstruct(test) - test) ** 2).mean()), rel=1e-4)


def test_a_big_endian_16_bit_tiff_reads_the_same_for_training_and_for_the_run(tmp_path):
    """One decoder: 16-bit grey scaled to 8 bits (by 257) when a folder trains and when a run reads a file."""
    from PIL import Image

    import convae
    from convae.data import floats, load_for
    from convae.inference.run import read_images

    folder, rng = tmp_path / "tiffs", np.random.default_rng(0)
    folder.mkdir()
    raw = rng.integers(0, 65536, size=(12, 8, 8)).astype(">u2")
    for i, a in enumerate(raw):
        Image.frombytes("I;16B", (8, 8), a.tobytes()).save(folder / f"{i:02d}.tif")
    out = tmp_path / "run"
    arch = "conv(4,3,stride=2) relu dense(4)"
    assert (
        main(["train", "--data", f"folder:{folder}", "--arch", arch, "--epochs", "1", "--quiet", "--out", str(out)])
        == 0
    )
    run = convae.load(out)
    assert run.model.input_shape == (1, 8, 8)  # grey, not refused as 3-channel
    expected = floats(np.round(raw[3].astype(np.float64) / 257).astype(np.uint8)[None])
    dataset = load_for(run.config)
    row = [f.name for f in dataset.files].index("03.tif")
    np.testing.assert_array_equal(floats(dataset.x_train[row]), expected)  # what training saw
    np.testing.assert_array_equal(read_images(run, [str(folder / "03.tif")])[0], expected)  # what the run reads
    assert main(["reconstruct", str(out), str(folder / "03.tif"), "--out", str(tmp_path / "recon")]) == 0
    assert len(list((tmp_path / "recon").glob("*.png"))) == 1


def test_a_split_read_at_most_n_samples_is_every_kth_of_it(run_dir):
    import numpy as np

    import convae
    from convae.inference.run import dataset_split

    run = convae.load(run_dir)
    for split in ("train", "test", "all"):
        x, y, _ = dataset_split(run, None, split)
        few, few_y, _ = dataset_split(run, None, split, at_most=7)
        step = -(-len(x) // 7)
        assert len(few) <= 7 and np.array_equal(few, x[::step])
        assert few_y is None if y is None else np.array_equal(few_y, y[::step])
        assert np.array_equal(dataset_split(run, None, split, at_most=len(x))[0], x)
