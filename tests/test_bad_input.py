"""A hostile but realistic user's mistakes: each class of them is one line, exit status 2, no traceback,
and nothing written (the folder the command was pointed at is as it was)."""

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import write_npz

from convae.cli import main


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels (a decompression bomb), with no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    np.savez(d / "objects.npz", x=np.array([object(), object()], dtype=object))
    good = write_npz(d / "good.npz")
    (d / "truncated.npz").write_bytes(good.read_bytes()[:200])
    np.save(d / "empty_axis.npy", np.zeros((4, 0, 8), np.float32))
    bomb = d / "bomb"
    bomb.mkdir()
    _png_header_only(bomb / "big.png", 30000, 30000)
    (d / "latin.toml").write_bytes("epochs = 3 # caf\xe9\n".encode("latin-1"))
    (d / "scalar.toml").write_text("train = 5\n")
    (d / "list.json").write_text('{"train": [1, 2]}')
    (d / "size.toml").write_text("image_size = [0, 0]\n")
    (d / "huge.json").write_text('{"epochs": 100000000000000000000000}')
    (d / "run.yaml").write_text("epochs: 3\n")
    (d / "unknown.toml").write_text("colour = 'red'\n")
    return d


CASES = [
    # architectures
    (["summary", "conv(99999999999999999999,3)", "--input-shape", "1,8,8"], "at most 65,536"),
    (["summary", "conv(8,3,stride=2,stride=3)", "--input-shape", "1,8,8"], "argument 'stride' given twice"),
    (["summary", " ".join(["conv(1,1)"] * 10_000), "--input-shape", "1,8,8"], "convae builds at most 1,000"),
    # data
    (["train", "--data", "npy:{d}/objects.npz"], "objects.npz: cannot read array file (it holds Python objects"),
    (["train", "--data", "npy:{d}/truncated.npz"], "truncated.npz: cannot read array file"),
    (["train", "--data", "npy:{d}/empty_axis.npy"], "empty_axis.npy: the array has an empty axis"),
    (["train", "--data", "folder:{d}/bomb"], "big.png: the image claims more pixels than Pillow's safety limit"),
    # flags
    (["train", "--threads", "-1"], "--threads: must be a positive integer, not -1"),
    (["train", "--seed", "-1"], "--seed: must be an integer >= 0, not -1"),
    (["train", "--weight-decay", "nan"], "--weight-decay: must be a finite number, not nan"),
    (["train", "--clip-grad", "nan"], "--clip-grad: must be a finite number, not nan"),
    (["train", "--contrastive", "nan"], "--contrastive: must be a finite number, not nan"),
    (["train", "--data", "digits", "--noise", "gaussian:nan"], "noise 'gaussian:nan': amount must be"),
    (["train", "--embedding-samples", "-5"], "--embedding-samples: must be an integer >= 0, not -5"),
    (["train", "--zca-epsilon", "-1"], "--zca-epsilon: must be positive, not -1.0"),
    (["train", "--normalize", "bogus"], "--normalize: must be one of none, unit, standardize, zca"),
    (["train", "--epochs", "abc"], "--epochs: 'abc' is not an integer"),
    (["reconstruct", "RUN", "--data", "digits", "--limit", "-1", "--out", "{d}/out"], "'-1' is not a positive integer"),
    # config files
    (["train", "--config", "{d}/latin.toml"], "latin.toml: not UTF-8 text"),
    (["train", "--config", "{d}/scalar.toml"], "'train' must be a table of settings, not 5"),
    (["train", "--config", "{d}/list.json"], "'train' must be a table of settings, not [1, 2]"),
    (["train", "--config", "{d}/size.toml"], "image_size must be two positive integers"),
    (["train", "--config", "{d}/huge.json"], "epochs must be at most 9,223,372,036,854,775,807"),
    (["train", "--config", "{d}/run.yaml"], "config files are TOML (.toml) or JSON (.json), not '.yaml'"),
    (["train", "--config", "{d}/unknown.toml"], "unknown setting(s): colour"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_a_mistake_is_one_line_exit_2_and_writes_nothing(args, message, files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run directory would land in ./runs
    args = [a.replace("{d}", str(files)) for a in args] + (
        ["--out", str(tmp_path / "run")] if args[0] == "train" else []
    )
    before = sorted(p.name for p in files.iterdir())
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's refusals
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in files.iterdir()) == before


def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_one_line(run_dir, tmp_path, capsys):
    import shutil

    from convae import checkpoint

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    state = checkpoint.load(copy / "best.pt")
    state["model_config"]["arch"] = "conv(4,3,stride=2) bn relu dense(6)"  # 8 channels trained, 4 declared
    checkpoint.save(copy / "best.pt", {k: v for k, v in state.items() if k not in ("format", "version")})
    assert main(["eval", str(copy), "--no-probe"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "best.pt: the weights do not fit the model: size mismatch for" in err, err


def _outputs(run_dir, tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder.npy").mkdir()
    return {
        "encode into a file": ["encode", str(run_dir), "--out", str(tmp_path / "a-file" / "codes.npy")],
        "encode onto a folder": ["encode", str(run_dir), "--out", str(tmp_path / "a-folder.npy")],
        "reconstruct into a file": ["reconstruct", str(run_dir), "--data", "digits", "--out", str(tmp_path / "a-file")],
        "score maps into a file": ["score", str(run_dir), "--maps", str(tmp_path / "a-file" / "maps")],
        "score summary onto a folder": [
            "score",
            str(run_dir),
            "--out",
            str(tmp_path / "scores.csv"),
            "--summary",
            str(tmp_path / "a-folder.npy"),
        ],
        "export onto a folder": ["export", str(run_dir), "--out", str(tmp_path / "a-folder.npy")],
        "export into a file": ["export", str(run_dir), "--out", str(tmp_path / "a-file" / "m.onnx")],
    }


def test_outputs_that_cannot_be_written_are_refused_before_anything_is_computed(run_dir, tmp_path, capsys):
    for name, args in _outputs(run_dir, tmp_path).items():
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("is a file" in err or "is a folder" in err), (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder.npy"]  # no scores.csv


def test_an_unwritable_place_is_one_line(run_dir, tmp_path, capsys, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # root can write anywhere; this is what others get
    assert main(["encode", str(run_dir), "--out", str(tmp_path / "codes.npy"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith("codes.npy: cannot write (Permission denied)")


def test_export_creates_a_missing_folder_rather_than_blaming_the_model(run_dir, tmp_path):
    assert main(["export", str(run_dir), "--out", str(tmp_path / "new" / "deeper" / "m.onnx")]) == 0
    assert (tmp_path / "new" / "deeper" / "m.onnx").stat().st_size > 0


def test_scoring_where_every_sample_is_the_anomaly_is_refused(run_dir, tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 255, (20, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "ones.npz", x=x, y=np.zeros(20, np.int64))
    assert main(["score", str(run_dir), "--data", f"npy:{tmp_path / 'ones.npz'}", "--anomaly-class", "0"]) == 2
    assert "every scored sample is of class 0" in capsys.readouterr().err


def test_library_warnings_do_not_precede_the_error_line(monkeypatch, capsys):
    import warnings

    from convae import cli
    from convae.errors import ConvaeError

    def noisy(args):
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        raise ConvaeError("the user's mistake")

    monkeypatch.setattr(cli, "_cmd_presets", noisy)
    assert main(["presets"]) == 2
    assert capsys.readouterr().err == "convae: error: the user's mistake\n"


def test_ctrl_c_while_starting_up_is_one_line():
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "convae", "train", "--data", "digits", "--out", "/nonexistent/never"],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)  # importing torch takes longer than this
    process.send_signal(signal.SIGINT)
    err = process.communicate(timeout=60)[1]
    assert process.returncode == 130 and "Traceback" not in err and err.strip() == "convae: interrupted", err


def test_ctrl_c_inside_an_import_is_raised_once_the_import_is_done(tmp_path, monkeypatch, capsys):
    # Raised inside an import, torch's C++ can abort on it or a library swallow it (seen in startup).
    import signal
    import time

    from convae import cli

    (tmp_path / "slow_library.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.2)\nLOADED = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    after_import = []

    def command(args):
        import slow_library

        after_import.append(slow_library.LOADED)
        time.sleep(5)  # the interruption arrives here
        return 0

    monkeypatch.setattr(cli, "_cmd_presets", command)
    # What was there before comes back: Python's default handler, or SIG_IGN where the tests run
    # as a shell's background job (which starts with Ctrl-C ignored).
    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["presets"]) == 130
    assert after_import == [True]
    assert capsys.readouterr().err == "convae: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_that_passed_through_exec_still_exits_130(tmp_path):
    # CPython ends a `python -m` process by SIGINT after a KeyboardInterrupt left any exec() of a
    # string (scipy's import runs one), whatever exit status it is given, unless convae clears that.
    script = (
        "import runpy, sys\n"
        "import convae.cli\n"
        "def interrupted(argv=None):\n"
        "    try:\n"
        "        exec('raise KeyboardInterrupt')\n"
        "    except KeyboardInterrupt:\n"
        "        return 130\n"
        "convae.cli.main = interrupted\n"
        "runpy.run_module('convae', run_name='__main__', alter_sys=True)\n"
    )
    (tmp_path / "launch.py").write_text(script)
    process = subprocess.run([sys.executable, "-m", "launch"], cwd=tmp_path, capture_output=True, text=True)
    assert process.returncode == 130, process.stderr


def test_string_labels_in_an_npz_become_classes(tmp_path):
    from convae import data

    x = np.zeros((4, 8, 8), np.uint8)
    np.savez(tmp_path / "s.npz", x=x, y=np.array(["dog", "cat", "dog", "cat"]))
    ds = data.load(f"npy:{tmp_path / 's.npz'}")
    assert ds.classes == ["cat", "dog"] and ds.y_train.tolist() == [1, 0, 1, 0]
    json.dumps(ds.classes)
