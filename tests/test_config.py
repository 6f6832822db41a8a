import json
import subprocess
import sys

import pytest
from helpers import write_npz

from convae import presets
from convae.cli import main
from convae.config import TrainConfig, load_config_file, resolve_config
from convae.errors import ConvaeError


def test_settings_resolution_and_errors():
    config = resolve_config({"arch": "fmnist-32", "epochs": 2})
    assert config.epochs == 2 and config.schedule == "onecycle"  # preset recipe under user settings
    assert resolve_config({}).arch == "fmnist-32"
    with pytest.raises(ConvaeError, match="unknown setting\\(s\\): colour"):
        resolve_config({"colour": "red"})
    with pytest.raises(ConvaeError, match="loss bce needs data in \\[0, 1\\]"):
        resolve_config({"loss": "bce", "normalize": "standardize"})
    with pytest.raises(ConvaeError, match="schedule must be one of"):
        resolve_config({"schedule": "exponential"})
    with pytest.raises(ConvaeError, match="setting lr: expected float, got '3e-3'"):
        resolve_config({"lr": "3e-3"})
    with pytest.raises(ConvaeError, match="setting epochs: expected int"):
        resolve_config({"epochs": 2.5})
    assert resolve_config({"lr": 1}).lr == 1.0 and resolve_config({"patience": None}).patience is None
    with pytest.raises(ConvaeError, match="epochs must be a positive integer"):
        TrainConfig(epochs=0).validate()
    assert resolve_config({"compile": "reduce-overhead"}).compile == "reduce-overhead"
    assert resolve_config({"compile": True}).compile is True
    with pytest.raises(ConvaeError, match="compile must be true, false or one of default, reduce-overhead"):
        resolve_config({"compile": "fast"})


def test_the_default_config_is_the_default_preset_with_its_recipe():
    default = presets.get(presets.DEFAULT_PRESET)
    assert TrainConfig() == resolve_config({}) == resolve_config({"arch": default.name})
    assert all(getattr(TrainConfig(), key) == value for key, value in default.train.items())


def test_every_preset_recipe_is_what_it_was_before_the_defaults_moved():
    # The defaults became the default preset's recipe (adamw, onecycle, lr 2e-3, 15 epochs); presets that
    # trained with the old defaults (adam, constant) say so in their recipe, so they train as before.
    for name in ("keras-denoise", "small"):
        config = resolve_config({"arch": name})
        assert (config.optimizer, config.schedule) == ("adam", "constant"), name
    assert resolve_config({"arch": "keras-denoise"}).lr == 1e-3


def test_train_help_shows_the_defaults_the_library_uses(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = TrainConfig()
    assert f"epochs (with --resume: train a run on to this many) (default: {defaults.epochs})" in text
    assert f"(default: {defaults.optimizer})" in text and "--tied [true|false]" in text
    for section in ("data:", "model:", "objective:", "optimisation:", "runtime:", "logging:"):
        assert section in text
    assert "--schedule-start" not in text  # recorded by the trainer, not a user's setting


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--threads", "0"], "--threads: must be a positive integer, not 0"),
        (["--epochs", "abc"], "--epochs: 'abc' is not an integer"),
        (["--normalize", "bogus"], "--normalize: must be one of none, unit, standardize, zca, not 'bogus'"),
        (["--contrastive", "-1"], "--contrastive: must be >= 0, not -1.0"),
        (["--compile", "fast"], "--compile: 'fast' is not true, false or one of default, reduce-overhead"),
        (["--val-fraction", "1"], "--val-fraction: must be in [0, 1), not 1.0"),
        (["--weight-decay", "nan"], "--weight-decay: must be a finite number, not nan"),
        (["--tied", "maybe"], "--tied: 'maybe' is not true or false"),
        (["--crop", "0"], "--crop: must be a positive integer, not 0"),
    ],
)
def test_bad_flags_are_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_the_commands_that_use_a_run_check_threads_as_train_does(capsys):
    for command in (["train"], ["eval", "RUN"], ["score", "RUN"]):
        with pytest.raises(SystemExit):
            main([*command, "--threads", "0"])
        assert "--threads: must be a positive integer, not 0" in capsys.readouterr().err


def test_train_from_config_file_with_flag_override(tmp_path, capsys):

    data = write_npz(tmp_path / "d.npz")
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'data = "npy:{data}"\n'
        'arch = "conv(4,3,stride=2) relu dense(4)"\n'
        "epochs = 5\nbatch_size = 32\nhistograms = false\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["batch_size"] == 32  # flag wins, file fills the rest
    printed = capsys.readouterr().out
    assert f"tensorboard --logdir {out}" in printed and "val_mse" in printed


def test_config_file_may_list_layers(tmp_path):

    data = write_npz(tmp_path / "d.npz")
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'data = "npy:{data}"\nepochs = 1\nhistograms = false\n'
        'arch = ["conv(4,3,stride=2)", "relu", {type = "dense", features = 4}]\n'
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["arch"][2] == {"type": "dense", "features": 4}


def test_config_file_tables_formats_and_encodings(tmp_path):
    good = tmp_path / "t.toml"
    good.write_text("[train]\nepochs = 3\nlr = 0.01\n")
    assert load_config_file(good) == {"epochs": 3, "lr": 0.01}
    cases = {
        "mixed.toml": ("epochs = 3\n[train]\nlr = 0.01\n", "both in [train] and outside it (epochs)"),
        "table.toml": ("[optim]\nlr = 0.01\n", "unknown table(s) optim"),
        "scalar.toml": ("train = 5\n", "'train' must be a table of settings"),
        "list.json": ('{"train": [1, 2]}', "'train' must be a table of settings"),
        "top.json": ("[1, 2]", "expected a table of settings, got list"),
        "run.yaml": ("epochs: 3\n", "config files are TOML (.toml) or JSON (.json), not '.yaml'"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConvaeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            load_config_file(tmp_path / name)
    (tmp_path / "latin.toml").write_bytes("epochs = 3 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConvaeError, match="not UTF-8 text"):
        load_config_file(tmp_path / "latin.toml")


def test_a_config_file_is_checked_as_flags_are(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("image_size = [0, 0]\n")
    with pytest.raises(ConvaeError, match="image_size"):
        resolve_config(load_config_file(bad))


def test_importing_convae_and_its_spec_and_config_imports_no_torch():
    code = "import sys, convae, convae.network.spec, convae.config, convae.cli; convae.cli.make_parser()"
    code += "; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_the_settings_reference_in_docs_is_generated_from_the_fields():
    from pathlib import Path

    from convae.config import settings_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
    assert doc.read_text() == settings_markdown(), "regenerate: python3 -m convae.config > docs/settings.md"
