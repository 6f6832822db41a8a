import subprocess
import sys

import convae
from convae.cli import main


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
