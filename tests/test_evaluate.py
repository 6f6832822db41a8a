import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import write_npz

from convae import evaluate as ev
from convae.cli import main
from convae.errors import ConvaeError
from convae.train import resolve_config, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ev")
    data = f"npy:{write_npz(tmp / 'd.npz', n=120)}"
    out = tmp / "run"
    config = resolve_config(
        dict(data=data, arch="conv(8,3,stride=2) bn relu dense(6)", epochs=3, batch_size=16, lr=3e-3)
    )
    config.out, config.quiet, config.histograms = str(out), True, False
    train(config)
    return out


def test_ssim_properties():
    x = torch.rand(4, 1, 16, 16)
    assert torch.allclose(ev.ssim(x, x, 1.0), torch.ones(4), atol=1e-5)
    slightly = ev.ssim(x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1), 1.0)
    badly = ev.ssim(x, torch.rand_like(x), 1.0)
    assert (slightly > badly).all() and (slightly < 1).all()


def test_evaluate_against_pca_writes_report(run_dir):
    result = ev.evaluate(run_dir)
    assert result["split"] == "validation" and result["code_size"] == 6
    model, pca = result["model"], result["pca_6"]
    for metrics in (model, pca):
        assert metrics["mse"] > 0 and metrics["psnr"] > 0 and 0 < metrics["ssim"] <= 1
        assert 0 <= metrics["probe_accuracy"] <= 1
        assert set(metrics["mse_per_class"]) == {"0", "1", "2"}
    # The MSE is in the original scale and agrees with a direct computation.
    run = ev.load(run_dir)
    _, _, x_eval, _, _ = ev.eval_splits(run)
    direct = float(((run.reconstruct(x_eval) - x_eval) ** 2).mean())
    assert model["mse"] == pytest.approx(direct, rel=1e-5)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["model"]["mse"] == pytest.approx(model["mse"])
    report = (run_dir / "report.md").read_text()
    for picture in ("reconstructions.png", "loss_curves.png", "codes_map.png"):
        assert picture in report and (run_dir / picture).stat().st_size > 0
    assert "PCA-6" in ev.format_table(result)


def test_load_gives_encode_decode_on_raw_images(run_dir):
    import convae

    run = convae.load(run_dir)
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    z = run.encode(x)
    assert z.shape == (5, 6)
    assert run.decode(z).shape == (5, 1, 8, 8)
    with pytest.raises(ConvaeError, match=r"expected inputs shaped \(N, 1, 8, 8\)"):
        run.encode(np.zeros((2, 3, 8, 8), np.float32))


def test_eval_cli(run_dir, capsys):
    assert main(["eval", str(run_dir), "--json", "--no-probe"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "probe_accuracy" not in result["model"]
    assert main(["eval", str(run_dir / "nothing")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    empty = run_dir.parent / "empty"
    empty.mkdir()
    assert main(["eval", str(empty)]) == 2
    assert "no best.pt checkpoint" in capsys.readouterr().err


def test_commands_on_a_run_take_threads(run_dir, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # recorded, not applied to the test process
    assert main(["eval", str(run_dir), "--json", "--no-probe", "--threads", "1"]) == 0 and calls == [1]
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "c.npy"), "--quiet", "--threads", "2"]) == 0
    assert calls == [1, 2]
    with pytest.raises(SystemExit) as exit_:
        main(["score", str(run_dir), "--threads", "0"])
    assert exit_.value.code == 2 and "'0' is not a positive number of threads" in capsys.readouterr().err


def test_encode_cli_npz_and_npy(run_dir, tmp_path):
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "codes.npz"), "--quiet"]) == 0
    saved = np.load(tmp_path / "codes.npz")
    assert saved["codes"].shape == (120, 6) and saved["labels"].shape == (120,)
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "codes.npy"), "--split", "val", "--quiet"]) == 0
    assert np.load(tmp_path / "codes.npy").shape == (12, 6)
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "codes.txt")]) == 2


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


def test_score_with_anomaly_class(run_dir, tmp_path, capsys):
    result = ev.score(run_dir, fpr=0.1, anomaly_class=2, maps_dir=tmp_path / "maps", maps=4)
    assert 0 <= result["roc_auc"] <= 1 and 0 <= result["recall"] <= 1
    assert len(result["scores"]) == 120 and len(list((tmp_path / "maps").iterdir())) == 4
    # The threshold leaves about 10% of the (normal) validation samples above it.
    run = ev.load(run_dir)
    x_val, y_val, _ = ev.dataset_split(run, None, "val")
    val_scores, _ = ev.anomaly_scores(run, x_val[y_val != 2])
    assert (val_scores > result["threshold"]).mean() <= 0.1 + 1e-9
    csv_path = tmp_path / "scores.csv"
    assert main(["score", str(run_dir), "--anomaly-class", "1", "--out", str(csv_path), "--metric", "ssim"]) == 0
    assert "ROC-AUC" in capsys.readouterr().out
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "index,score,flagged,label" and len(lines) == 121
    assert main(["score", str(run_dir), "--anomaly-class", "7"]) == 2
    assert "class 7 does not occur" in capsys.readouterr().err


def _onnx_matches(path, fn, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    want = fn(x).detach().numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize(
    "arch", ["conv(4,3,stride=2) relu maxpool(2) conv(6,4,stride=2)", "conv(4,3) avgpool(3) res(3) relu"]
)
def test_onnx_export_keeps_odd_sizes_exact(arch, tmp_path):
    import convae
    from convae.export import export

    model = convae.build(arch, (1, 9, 9)).eval()
    info = export(model, tmp_path / "ae.onnx")
    assert info["dynamic"] == ["batch", "spatial"]
    for shape in ((3, 1, 9, 9), (1, 1, 13, 10), (2, 1, 16, 17)):
        _onnx_matches(tmp_path / "ae.onnx", model, torch.rand(*shape))
    export(model, tmp_path / "dec.onnx", part="decoder")
    _onnx_matches(tmp_path / "dec.onnx", model.decode, torch.rand(4, *model.code_shape))


def test_export_cli_all_parts(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--part", "all", "--out", str(tmp_path / "m.onnx")]) == 0
    run = ev.load(run_dir)
    x = torch.rand(5, 1, 8, 8)
    _onnx_matches(tmp_path / "m.autoencoder.onnx", run.model, x)
    _onnx_matches(tmp_path / "m.encoder.onnx", run.model.encode, x)
    _onnx_matches(tmp_path / "m.decoder.onnx", run.model.decode, torch.rand(3, 6))
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    assert torch.allclose(scripted(x), run.model(x), atol=1e-5)


def test_onnx_export_prints_only_what_it_wrote(run_dir, tmp_path):
    # A fresh process: PyTorch's exporter logs its warnings (torchvision ops it skips) once per process.
    out = tmp_path / "m.onnx"
    command = [sys.executable, "-m", "convae", "export", str(run_dir), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and out.exists(), result.stderr
    assert result.stderr == "" and result.stdout.startswith(f"autoencoder: {out}")


def test_denoising_run_reports_denoised_mse(tmp_path):
    data = f"npy:{write_npz(tmp_path / 'd.npz', n=64)}"
    config = resolve_config(
        dict(data=data, arch="conv(8,3) relu conv(8,3,stride=2) relu", epochs=2, batch_size=16, noise="gaussian:0.3")
    )
    config.out, config.quiet, config.histograms = str(tmp_path / "run"), True, False
    train(config)
    model = ev.evaluate(tmp_path / "run", probe=False, write=False)["model"]
    # Clipping to [0, 1] removes part of the noise on dark pixels: between sigma^2/2 and sigma^2.
    assert model["denoised_mse"] > 0 and 0.3**2 / 2 * 0.8 < model["noisy_input_mse"] < 0.3**2
