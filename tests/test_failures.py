"""A command that fails changes nothing: not the run it reads, not a file the user had.

Each command that reads a run (eval, encode, reconstruct, score, export, train --resume) runs with
a failure injected after it has started, at two kinds of moment:

- ``compute``: Ctrl-C the first time data is normalised (every command does that once its run and
  data have loaded, before it writes anything);
- ``write:K``: the disk fills up while the command writes its Kth file (for K = 1, 2, 3), before or
  after its other files are written.

The run directory (every file, byte for byte, and no new ones) and the user's files in the output
places (one already there under each name the command would write) are compared before and after.
"""

import errno
import shutil

import numpy as np
import pytest
from helpers import write_npz

from convae import checkpoint
from convae.cli import main
from convae.data import preprocess


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("failures")
    data = f"npy:{write_npz(tmp / 'd.npz', n=64)}"
    out = tmp / "run"
    flags = ["--arch", "conv(8,3,stride=2) bn relu dense(6)", "--epochs", "2", "--batch-size", "16", "--quiet"]
    assert main(["train", "--data", data, *flags, "--out", str(out)]) == 0
    return out, data


def _commands(run, data, outs):
    """(name, argv) of each command that reads ``run``; its outputs go under ``outs``."""
    return [
        ("eval", ["eval", str(run), "--no-probe"]),
        ("encode", ["encode", str(run), "--out", str(outs / "codes.npz")]),
        ("reconstruct", ["reconstruct", str(run), "--data", data, "--limit", "3", "--out", str(outs / "pngs")]),
        ("score", ["score", str(run), "--out", str(outs / "s.csv"), *_score_files(outs)]),
        ("export", ["export", str(run), "--scores", "--out", str(outs / "model.onnx")]),
        ("train --resume", ["train", "--resume", str(run), "--epochs", "3"]),
    ]


def _score_files(outs):
    return ["--summary", str(outs / "s.json"), "--maps", str(outs / "maps"), "--report", str(outs / "page.html")]


def _user_files(outs):
    """A file the user already has under every name a command may write, and in every folder."""
    outs.mkdir()
    for name in ("codes.npz", "s.csv", "s.json", "page.html", "model.onnx"):
        (outs / name).write_bytes(b"the user's own " + name.encode())
    for folder, name in (("pngs", "00000.png"), ("maps", "001_00000.png")):
        (outs / folder).mkdir()
        (outs / folder / name).write_bytes(b"the user's own picture")


class Injected:
    """Counts the moments it was asked to fail at, and fails at the chosen one."""

    def __init__(self, monkeypatch, moment):
        self.fired = 0
        if moment == "compute":
            original = preprocess.Normalizer.transform

            def transform(normalizer, x):
                self.fired += 1
                raise KeyboardInterrupt

            monkeypatch.setattr(preprocess.Normalizer, "transform", transform)
            self._keep = original
        else:
            at, seen = int(moment.removeprefix("write:")), [0]
            original_write = checkpoint.atomic_write

            def atomic_write(path, write):
                def full(f):
                    seen[0] += 1
                    if seen[0] == at:
                        self.fired += 1
                        f.write(b"half a file")
                        raise OSError(errno.ENOSPC, "No space left on device")
                    write(f)

                original_write(path, full)

            monkeypatch.setattr(checkpoint, "atomic_write", atomic_write)


# What each command may change in the run when it succeeds (as its --help says).
DOCUMENTED = {
    "eval": {"eval.json", "report.md", "reconstructions.png", "loss_curves.png", "codes_map.png"},
    "encode": set(),
    "reconstruct": set(),
    "score": {"thresholds.json"},
    "export": {"thresholds.json"},
}
MOMENTS = ["compute", "write:1", "write:2", "write:3"]


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_command_that_fails_leaves_the_run_and_the_users_files_as_they_were(trained, tmp_path, moment, capsys):
    run, data = tmp_path / "run", trained[1]
    shutil.copytree(trained[0], run)
    outs = tmp_path / "outs"
    _user_files(outs)
    for name, argv in _commands(run, data, outs):
        run_before, outs_before = _tree(run), _tree(outs)
        with pytest.MonkeyPatch.context() as patch:
            injected = Injected(patch, moment)
            status = main(argv)
        err = capsys.readouterr().err
        if status == 0:  # fewer writes than that, or one it may skip (a threshold in a read-only run)
            assert set(_tree(run)) - set(run_before) <= DOCUMENTED.get(name, set()), (name, moment)
            continue
        assert injected.fired and status == (130 if moment == "compute" else 2), (name, moment, err)
        last = err.splitlines()[-1]  # (train --resume says first what it resumes)
        assert "Traceback" not in err and ("No space left" in last or "interrupted" in last), (name, moment, err)
        assert _tree(run) == run_before, (name, moment, set(_tree(run)) ^ set(run_before))
        assert _tree(outs) == outs_before, (name, moment, set(_tree(outs)) ^ set(outs_before))
        assert not [p for p in (*run.rglob("*"), *outs.rglob("*")) if p.name.endswith(".tmp")], (name, moment)


def test_the_same_commands_succeed_without_a_failure(trained, tmp_path, capsys):
    """The other half: without the injection each command succeeds and writes what it documents."""
    run, data = tmp_path / "run", trained[1]
    shutil.copytree(trained[0], run)
    outs = tmp_path / "outs"
    _user_files(outs)
    for name, argv in _commands(run, data, outs):
        assert main(argv) == 0, (name, capsys.readouterr().err)
    assert np.load(outs / "codes.npz")["codes"].shape[1] == 6
    assert (outs / "model.onnx").read_bytes()[:4] != b"the "
    assert {"eval.json", "report.md", "thresholds.json"} <= set(_tree(run))
