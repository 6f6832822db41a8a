import json

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
    run = ev.load(run_dir)
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
