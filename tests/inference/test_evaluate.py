import json

import pytest
from helpers import write_npz

from convae.cli import main
from convae.config import resolve_config
from convae.inference import evaluate as ev
from convae.inference.reports import format_table
from convae.inference.run import load
from convae.training.train import train


def test_evaluate_against_pca_writes_report(run_dir):
    result = ev.evaluate(run_dir)
    assert result["split"] == "test" and result["code_size"] == 6  # held out: the npz has no test split
    model, pca = result["model"], result["pca_6"]
    for metrics in (model, pca):
        assert metrics["mse"] > 0 and metrics["psnr"] > 0 and 0 < metrics["ssim"] <= 1
        assert 0 <= metrics["probe_accuracy"] <= 1
        assert set(metrics["mse_per_class"]) == {"0", "1", "2"}
    # The MSE is in the original scale and agrees with a direct computation.
    run = load(run_dir)
    _, x_fit, x_eval, _, y_eval = ev.eval_splits(run)
    direct = float(((run.reconstruct(x_eval) - x_eval) ** 2).mean())
    assert model["mse"] == pytest.approx(direct, rel=1e-5)
    # PCA's figure is scikit-learn's PCA at the code size, fitted on the training split.
    from sklearn.decomposition import PCA

    flat_fit, flat_eval = x_fit.reshape(len(x_fit), -1), x_eval.reshape(len(x_eval), -1)
    fitted = PCA(6, random_state=0).fit(flat_fit)
    pca_mse = float(((fitted.inverse_transform(fitted.transform(flat_eval)) - flat_eval) ** 2).mean())
    assert pca["mse"] == pytest.approx(pca_mse, rel=1e-5)
    # The per-class figures weighted by each class's count give the whole.
    counts = {str(c): int((y_eval == c).sum()) for c in (0, 1, 2)}
    weighted = sum(model["mse_per_class"][c] * n for c, n in counts.items()) / len(y_eval)
    assert weighted == pytest.approx(model["mse"], rel=1e-5)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["model"]["mse"] == pytest.approx(model["mse"])
    report = (run_dir / "report.md").read_text()
    for picture in ("reconstructions.png", "loss_curves.png", "codes_map.png"):
        assert picture in report and (run_dir / picture).stat().st_size > 0
    assert "PCA-6" in format_table(result)


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
