"""What a run directory holds at each moment, and what each state lets the next command do."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_npz

from convae import checkpoint
from convae.cli import main
from convae.training import rundir

SCRIPTS = Path(__file__).parents[1] / "scripts"
ARCH = "conv(8,3,stride=2) bn relu dense(8)"


@pytest.fixture
def flags(tmp_path):
    data = f"npy:{write_npz(tmp_path / 'blobs.npz')}"
    return ["--data", data, "--arch", ARCH, "--epochs", "2", "--batch-size", "16", "--quiet", "--histograms", "false"]


def _killed(moment, at, flags, out):
    command = [sys.executable, str(SCRIPTS / "kill_at.py"), moment, str(at), "--", "train", *flags, "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr  # SIGKILL: nothing of convae's ran after it


def _weights(run):
    return checkpoint.load(Path(run) / "last.pt")["model"]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_killed_before_its_first_checkpoint_can_be_resumed_from_the_start_or_reused(flags, tmp_path, capsys):
    assert main(["train", *flags, "--out", str(tmp_path / "straight")]) == 0
    for way in ("resume", "reuse"):
        out = tmp_path / way
        _killed("step", 2, flags, out)
        assert rundir.state_of(out) == "unstarted" and not (out / "last.pt").exists()
        capsys.readouterr()
        args = ["train", "--resume", str(out)] if way == "resume" else ["train", *flags, "--out", str(out)]
        assert main(args) == 0, capsys.readouterr().err
        said = capsys.readouterr().err
        assert "stopped before its first checkpoint" in said and "starting" in said
        assert _same(_weights(out), _weights(tmp_path / "straight"))  # the run as if never killed
        # the dead run's event file went: as many as a run that never died writes
        assert len(list(out.glob("events.out.tfevents.*"))) == len(list((tmp_path / "straight").glob("events.*")))


def test_a_run_killed_in_its_final_evaluation_is_finished_by_resume(flags, tmp_path, capsys):
    assert main(["train", *flags, "--out", str(tmp_path / "straight")]) == 0
    out = tmp_path / "killed"
    _killed("finish", 0, flags, out)
    assert rundir.state_of(out) == "started" and not (out / "final.json").exists()
    assert main(["train", "--resume", str(out)]) == 0
    assert "its epochs are done, its final evaluation is not; finishing it" in capsys.readouterr().err
    final = json.loads((out / "final.json").read_text())
    # the weights were trained in another process (whose thread count may differ): equal to rounding
    assert final == pytest.approx(json.loads((tmp_path / "straight" / "final.json").read_text()), rel=1e-3)
    assert main(["train", "--resume", str(out)]) == 2  # now finished: training on needs --epochs
    assert "already finished its 2 epochs" in capsys.readouterr().err


def test_a_run_directory_in_use_is_refused_and_left_alone(flags, tmp_path, capsys):
    out = tmp_path / "busy"
    lock = rundir.RunLock(out).acquire()  # another convae process holds it
    try:
        before = sorted(p.name for p in out.iterdir())
        assert main(["train", *flags, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another convae process (pid " in err and err.count("\n") == 1
        assert sorted(p.name for p in out.iterdir()) == before  # nothing written, nothing removed
    finally:
        lock.release()
    assert main(["train", *flags, "--out", str(out)]) == 0  # released: free to use


def test_two_trainings_into_one_directory_cannot_both_write(flags, tmp_path):
    out = tmp_path / "same"
    command = [sys.executable, "-m", "convae", "train", *flags, "--epochs", "6", "--out", str(out)]
    runs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "is in use by another convae process" in refused or "already holds a run" in refused
    assert len({p.name.split(".")[-2] for p in out.glob("events.out.tfevents.*")}) == 1  # one process (pid) wrote


def test_directory_states():
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "run"
        assert rundir.state_of(d) == "absent"
        d.mkdir()
        assert rundir.state_of(d) == "empty"
        (d / "config.json").write_text("{}")
        (d / "events.out.tfevents.1.host").write_text("")
        assert rundir.state_of(d) == "unstarted"
        (d / "last.pt").write_text("")
        assert rundir.state_of(d) == "started"
        (d / "final.json").write_text("{}")
        assert rundir.state_of(d) == "finished"
        (d / "notes.txt").unlink(missing_ok=True)
        other = Path(tmp) / "mine"
        other.mkdir()
        (other / "notes.txt").write_text("a user's file")
        assert rundir.state_of(other) == "foreign"


MOMENTS = [
    ("write:config.json", 1),
    ("write:preprocess.pt", 1),
    ("write:metrics.json", 1),
    ("write:last.pt", 1),  # the first checkpoint in its temporary file: once a run nothing took
    ("write:best.pt", 1),
    ("write:metrics.json", 2),
    ("write:last.pt", 2),
    ("write:final.json", 1),
]


def test_a_kill_while_any_run_file_is_written_leaves_a_run_that_resume_finishes(flags, tmp_path):
    """Every file `convae train` writes, killed with SIGKILL while it sits in its temporary file: the
    directory is one `--resume` continues (or, killed before the run's settings were in place, one the
    same command starts again), and the run that finishes is the run that was never killed. Every run
    is a fresh process, as a user's are (this one's PyTorch state is other tests' too)."""

    def convae(*args):
        done = subprocess.run([sys.executable, "-m", "convae", *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done

    convae("train", *flags, "--out", str(tmp_path / "straight"))
    straight = _weights(tmp_path / "straight")
    for moment, at in MOMENTS:
        out = tmp_path / f"{moment.removeprefix('write:')}-{at}"
        _killed(moment, at, flags, out)
        state = rundir.state_of(out)
        assert state in ("empty", "unstarted", "started"), (moment, at, sorted(p.name for p in out.iterdir()))
        convae(*(["train", *flags, "--out", str(out)] if state == "empty" else ["train", "--resume", str(out)]))
        assert rundir.state_of(out) == "finished" and _same(_weights(out), straight), (moment, at)
        assert not list(out.glob(".*.tmp")), (moment, at)  # no temporary file outlives the run
