"""The entry points: a run directory's contents, resuming, training on, refusing, convae.fit."""

import json

import pytest
import torch
from helpers import ARCH, small_config

from convae import checkpoint
from convae.errors import ConvaeError
from convae.inference.run import load_run
from convae.training.train import train

_config = small_config


def test_run_directory_contents(npz, tmp_path):
    result = train(_config(npz, tmp_path))
    run = tmp_path / "run"
    for name in ("config.json", "preprocess.pt", "last.pt", "best.pt", "metrics.json", "final.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]  # it learns
    assert json.loads((run / "config.json").read_text())["arch"] == ARCH
    assert result["final"]["val_mse"] > 0
    model, norm, config = load_run(run)
    assert config.epochs == 3 and norm.mode == "unit" and not model.training


def test_resume_matches_uninterrupted_run(npz, tmp_path):
    # Every source of randomness: shuffling, input noise, augmentation, dropout.
    extra = {"noise": "gaussian:0.1", "augment": "flip+shift:1", "arch": ARCH + " dropout(0.1)"}
    straight = train(_config(npz, tmp_path, "straight", **extra))

    steps_per_epoch = straight["metrics"][0]["step"]

    def interrupt(step):
        if step == steps_per_epoch + 2:  # in the middle of epoch 2
            raise KeyboardInterrupt

    config = _config(npz, tmp_path, "interrupted", **extra)
    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=interrupt)
    assert checkpoint.load(tmp_path / "interrupted" / "last.pt")["epoch"] == 1
    resumed = train(resume=tmp_path / "interrupted")
    assert resumed["epochs"] == 3
    a = checkpoint.load(tmp_path / "straight" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "interrupted" / "last.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["val_loss"] for m in straight["metrics"]] == [m["val_loss"] for m in resumed["metrics"]]


def test_failure_before_first_checkpoint_leaves_nothing(npz, tmp_path):
    with pytest.raises(ConvaeError, match="layer 1 'conv\\(8,9,padding=valid\\)'"):
        train(_config(npz, tmp_path, arch="conv(8,9,padding=valid) dense(3)"))
    assert not (tmp_path / "run").exists()

    def boom(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(npz, tmp_path), on_step=boom)
    assert not (tmp_path / "run").exists()


def test_refuses_to_overwrite_a_run(npz, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    with pytest.raises(ConvaeError, match="already exists and is not a convae run directory"):
        train(_config(npz, tmp_path))


@pytest.mark.parametrize("normalize, loss", [("standardize", "l1"), ("zca", "mse"), ("unit", "bce")])
def test_normalizations_and_losses_train(npz, tmp_path, normalize, loss):
    result = train(
        _config(npz, tmp_path, normalize=normalize, loss=loss, epochs=2, optimizer="adamw", schedule="cosine")
    )
    metrics = result["metrics"]
    assert all(m["val_mse"] == m["val_mse"] for m in metrics)  # finite, not NaN
    model, norm, _ = load_run(tmp_path / "run")
    assert norm.mode == normalize
    assert model.config.output == ("sigmoid" if normalize == "unit" else "identity")


def test_resume_with_more_epochs_trains_a_finished_run_on_with_a_new_schedule(npz, tmp_path, capsys):
    train(_config(npz, tmp_path, "a", epochs=2))
    finished = r"already finished its 2 epochs \(10 steps\); pass --epochs N or --max-steps N"
    with pytest.raises(ConvaeError, match=finished):
        train(resume=tmp_path / "a")
    with pytest.raises(ConvaeError, match="has trained 2 epochs already; --epochs must be more"):
        train(resume=tmp_path / "a", epochs=1)
    before = checkpoint.load(tmp_path / "a" / "last.pt")
    extended = train(resume=tmp_path / "a", epochs=4)
    assert (
        "training on from step 10 (epoch 2); the onecycle learning-rate schedule is planned anew"
        in capsys.readouterr().err
    )
    assert [m["epoch"] for m in extended["metrics"]] == [1, 2, 3, 4]
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    steps = before["step"]
    assert saved["epochs"] == 4 and saved["schedule_start"] == steps
    # a new one-cycle over the two added epochs: up near the peak again, then down to almost nothing
    rates = [m["lr"] for m in extended["metrics"]]
    assert rates[1] < 0.05 * 3e-3 and rates[2] > 10 * rates[1] and rates[3] < 0.05 * 3e-3
    # stopped during the extension and resumed: the same weights as the extension that never stopped
    train(_config(npz, tmp_path, "b", epochs=2))

    def interrupt(step):
        if step == 3 * steps // 2 + 1:  # in epoch 4 (steps is two epochs' worth)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(resume=tmp_path / "b", epochs=4, on_step=interrupt)
    train(resume=tmp_path / "b")
    a = checkpoint.load(tmp_path / "a" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_the_cli_takes_epochs_and_quiet_and_refuses_other_settings(npz, tmp_path, capsys):
    from convae.cli import main

    train(_config(npz, tmp_path, epochs=1))
    run = str(tmp_path / "run")
    assert main(["train", "--resume", run, "--epochs", "2", "--quiet"]) == 0
    assert "epoch 2/2" not in capsys.readouterr().err  # --quiet is honoured on resume
    assert main(["train", "--resume", run, "--lr", "0.1"]) == 2
    assert (
        "give no other settings (only --epochs or --max-steps to train it on, or --quiet): not lr"
        in capsys.readouterr().err
    )


def test_fit_takes_settings_as_the_cli_does_and_reports_each_epoch(npz, tmp_path):
    import convae

    seen = []
    run = convae.fit(
        npz, arch=ARCH, epochs=2, batch_size=16, out=str(tmp_path / "fit"), quiet=True, on_epoch=seen.append
    )
    assert isinstance(run, convae.Run) and run.config.epochs == 2 and run.config.optimizer == "adamw"
    assert [m["epoch"] for m in seen] == [1, 2] and seen[-1]["val_mse"] > 0
    assert run.final["val_mse"] > 0 and run.encode(run.reconstruct(np_blobs(npz))).shape[1:] == (8,)


def np_blobs(npz):
    import numpy as np

    return np.load(npz.removeprefix("npy:"))["x"][:4, None].astype("float32") / 255


def test_fit_trains_from_an_array_and_a_dataset_and_says_what_eval_needs(tmp_path, capsys):
    import numpy as np

    import convae
    from convae.cli import main

    signals = np.sin(np.linspace(0, 6, 97))[None, None] * np.random.default_rng(0).random((48, 1, 1))
    run = convae.fit(
        signals.astype(np.float32),
        spatial_dims=1,
        arch="conv(4,3,stride=2) relu dense(4)",
        epochs=2,
        batch_size=16,
        out=str(tmp_path / "sig"),
        quiet=True,
        histograms=False,
    )
    assert run.model.input_shape == (1, 97) and run.config.data == "python"
    assert run.reconstruct(signals[:3].astype(np.float32)).shape == (3, 1, 97)  # odd length, exact
    assert main(["eval", str(tmp_path / "sig")]) == 2
    assert "trained on data passed from Python; give the data to use (--data)" in capsys.readouterr().err
