"""The research scripts run and refuse bad arguments (not part of CI: `python3 -m pytest research/tests`)."""

import subprocess
import sys
from pathlib import Path

import pytest

from convae.config import resolve_config
from convae.training.train import train

RESEARCH = Path(__file__).resolve().parents[1]


def _run(script, *args):
    return subprocess.run([sys.executable, str(RESEARCH / script), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "extra",
    [
        ["--objective", "contrastive", "--augment", "shift:1", "--head", "8"],
        ["--objective", "acai", "--weight", "0.5"],
        ["--augment", "shift:1", "--target", "clean", "--loss", "bce", "--edges", "1", "--code-noise", "0.1"],
        ["--objective", "invariance", "--crop", "0.3", "--mask", "0.5"],
        ["--objective", "contrastive", "--crop", "0.3", "--head", "8", "--target", "original", "--jitter", "0.5"],
        ["--objective", "l1"],
        ["--objective", "rotation", "--weight", "1"],
        ["--objective", "uniformity"],
        ["--objective", "idec", "--clusters", "3", "--idec-epochs", "1"],
    ],
)
def test_probe_objectives_trains_and_reports_the_probe(extra):
    args = ["--data", "digits", "--arch", "small", "--epochs", "1", "--batch", "64", "--threads", "1"]
    args += ["--device", "cpu"]
    result = _run("probe_objectives.py", *args, *extra)
    assert result.returncode == 0, result.stderr
    *_, last = result.stdout.splitlines()
    fields = last.split()
    assert fields[:2] == ["objective", extra[1] if extra[0] == "--objective" else "none"]
    if {"acai", "l1", "rotation"} & set(extra):  # the term is reported each epoch
        assert float(result.stdout.split("code term ")[1].split()[0]) > 0
    if "idec" in extra:  # the clustering epoch follows the MSE one
        assert "idec epoch 1" in result.stdout and float(result.stdout.split(" kl ")[1].split()[0]) > 0
    assert float(fields[fields.index("MSE") + 1]) > 0 and 0 < float(fields[fields.index("probe") + 1]) <= 1
    assert fields[fields.index("device") + 1] == "cpu"


def test_probe_objectives_split_across_calls_ends_as_one_run(tmp_path):
    args = ["--data", "digits", "--arch", "small", "--epochs", "3", "--batch", "64", "--threads", "1"]
    args += ["--device", "cpu", "--objective", "contrastive", "--crop", "0.3", "--head", "8"]
    whole = _run("probe_objectives.py", *args)
    state = str(tmp_path / "state.pt")
    first = _run("probe_objectives.py", *args, "--state", state, "--stop-after", "2")
    assert first.returncode == 0, first.stderr
    assert "stopped after epoch 2 of 3" in first.stdout and "test MSE" not in first.stdout  # no figures yet
    rest = _run("probe_objectives.py", *args, "--state", state)
    assert rest.returncode == 0, rest.stderr
    assert rest.stdout.startswith("resumed from") and "epoch 1 " not in rest.stdout
    # the same losses each epoch and the same figures: the crops' generator, the weights and the schedule go on
    losses = [line.split("  ")[1] for line in (first.stdout + rest.stdout).splitlines() if line.startswith("epoch")]
    assert losses == [line.split("  ")[1] for line in whole.stdout.splitlines() if line.startswith("epoch")]
    figures = whole.stdout.splitlines()[-1].split("test MSE")[1].rsplit("  ", 1)[0]
    assert rest.stdout.splitlines()[-1].split("test MSE")[1].rsplit("  ", 1)[0] == figures
    other = _run("probe_objectives.py", *args, "--state", state, "--weight", "0.5")
    assert other.returncode == 2 and "other settings (weight)" in other.stderr and "Traceback" not in other.stderr


@pytest.mark.parametrize("args", [["--objective", "invariance"], ["--target", "clean"]])
def test_probe_objectives_needs_augmented_views(args):
    result = _run("probe_objectives.py", "--data", "digits", *args)
    assert result.returncode == 2 and "--augment" in result.stderr and "Traceback" not in result.stderr


def test_probe_objectives_refuses_bad_arguments_in_one_line():
    for args in (
        ["--batch", "0"],
        ["--arch", "fmnist-99"],
        ["--data", "nope"],
        ["--crop", "0.3"],  # crops make two views: they need a two-view objective
        ["--target", "original"],  # the images beside two views: the same
        ["--jitter", "0.5"],  # it distorts two views
        ["--objective", "contrastive", "--crop", "0.3", "--jitter", "2"],
        ["--mask", "1"],
        ["--objective", "idec", "--clusters", "1"],
        ["--device", "nope"],
        ["--stop-after", "2"],  # without --state there is nowhere to keep the epochs
    ):
        result = _run("probe_objectives.py", "--data", "digits", *args)
        assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr, args


def test_probe_layers_probes_the_input_every_block_and_the_code(tmp_path):
    config = resolve_config(
        dict(
            data="digits", arch="conv(8,3,stride=2) bn relu res(3) dense(6)", epochs=1, batch_size=64, val_fraction=0.2
        )
    )
    config.out, config.quiet, config.histograms = str(tmp_path / "run"), True, False
    train(config)
    result = _run("probe_layers.py", str(tmp_path / "run"), "--threads", "1")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[:-1]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    assert [r[1] for r in rows] == ["64-d", "128-d", "128-d", "6-d"]  # 8x8 digits, 8 channels at 4x4, the code
    assert rows[1][4:] == ["conv(8,3,stride=2)", "bn", "relu"] and rows[-1][-2:] == ["(the", "code)"]
    assert all(0 < float(r[3]) <= 1 for r in rows)

    only_code = _run("probe_layers.py", str(tmp_path / "run"), "--threads", "1", "--layers", "3")
    assert [line.split()[0] for line in only_code.stdout.splitlines()[:-1]] == ["3"]
    with_pca = _run("probe_layers.py", str(tmp_path / "run"), "--threads", "1", "--layers", "1", "--pca", "4")
    rows = [line.split() for line in with_pca.stdout.splitlines()[:-1]]
    assert [r[:2] for r in rows] == [["1", "128-d"], ["1", "4-d"]] and rows[1][4:] == ["PCA-4", "of", "it"]
    assert 0 < float(rows[1][3]) <= 1
    for bad in ("4", "x", "-1"):
        refused = _run("probe_layers.py", str(tmp_path / "run"), "--layers", bad)
        assert refused.returncode == 2 and "--layers" in refused.stderr and "Traceback" not in refused.stderr, bad


def test_probe_layers_refuses_a_missing_run_in_one_line(tmp_path):
    result = _run("probe_layers.py", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr
