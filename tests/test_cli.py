import subprocess
import sys

import convae
from convae.cli import main


def test_summary_takes_a_preset_name(capsys):
    from convae import presets

    assert main(["summary", "fmnist-32", "--input-shape", "1,28,28"]) == 0
    assert capsys.readouterr().out.strip() == convae.build(presets.get("fmnist-32").arch, (1, 28, 28)).summary()
    assert main(["summary", "fmnist-99", "--input-shape", "1,28,28"]) == 2
    assert "unknown preset 'fmnist-99'" in capsys.readouterr().err


def test_summary_prints_same_table_as_library(capsys):
    arch = "conv(8,3,stride=2) bn relu dense(4)"
    assert main(["summary", arch, "--input-shape", "1,9,9"]) == 0
    assert capsys.readouterr().out.strip() == convae.build(arch, (1, 9, 9)).summary()


def test_bad_spec_is_one_line_exit_2(capsys):
    assert main(["summary", "conv(8,3) bogus(2)", "--input-shape", "1,9,9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "layer 2 'bogus(2)': unknown layer 'bogus'" in err


def test_shape_error_exit_2(capsys):
    assert main(["summary", "conv(8,5,padding=valid)", "--input-shape", "1,3,3"]) == 2
    assert "input size 3" in capsys.readouterr().err


def test_module_entry_point_has_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "convae", "summary", "maxpool(4)", "--input-shape", "1,2"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "layer 1 'maxpool(4)'" in result.stderr


def test_train_user_errors_are_one_line_and_leave_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    cases = [
        ["--data", "nosuch"],
        ["--data", f"npy:{tmp_path / 'missing.npy'}"],
        ["--data", "digits", "--arch", "conv(8,9,padding=valid) dense(2)"],
        ["--data", "digits", "--arch", "nosuchpreset"],
    ]
    for args in cases:
        assert main(["train", *args, "--out", str(out), "--quiet"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("convae: error: ") and err.count("\n") == 1, err
        assert not out.exists()
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = \n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "bad.toml: cannot parse" in capsys.readouterr().err
