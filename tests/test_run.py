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
    from convae.run import load

    run = load(run_dir)
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    as_floats = run.reconstruct(images.astype(np.float32) / 255)
    np.testing.assert_allclose(run.reconstruct(images), as_floats, atol=1e-6)  # not 255 times off
    out = run.reconstruct(torch.as_tensor(images))
    assert isinstance(out, torch.Tensor) and torch.allclose(out, torch.as_tensor(as_floats), atol=1e-6)
    codes = run.encode(torch.as_tensor(images))
    assert isinstance(codes, torch.Tensor) and isinstance(run.decode(codes), torch.Tensor)
    assert isinstance(run.encode(images), np.ndarray)
