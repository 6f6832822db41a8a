import numpy as np

from convae.cli import main


def test_reconstruct_files_and_noise(run_dir, tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "out"
    assert main(["reconstruct", str(run_dir), str(img), "--out", str(out)]) == 0
    assert Image.open(out / "in.png").size == (8, 8)
    assert (
        main(
            [
                "reconstruct",
                str(run_dir),
                "--data",
                "digits",
                "--limit",
                "3",
                "--noise",
                "gaussian:0.3",
                "--out",
                str(tmp_path / "noisy"),
            ]
        )
        == 0
    )
    side = Image.open(tmp_path / "noisy" / "00000.png")
    assert side.size == (16, 8)  # noisy | reconstruction
    # Wrong size and wrong channel count: one line, exit 2, nothing written.
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(big)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    for bad, message in ((big, "is 8x9 pixels, the model takes 8x8"), (rgb, "has 3 channel(s), the model takes 1")):
        capsys.readouterr()
        assert main(["reconstruct", str(run_dir), str(img), str(bad), "--out", str(tmp_path / "nope")]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "nope").exists()
