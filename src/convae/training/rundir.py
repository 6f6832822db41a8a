"""A run directory's states, and the lock that keeps two processes out of one.

What a directory holds tells what a run there can do next (docs/training.md):

===============  ====================================================  ==========================================
state            what it holds                                         what ``train`` does with it
===============  ====================================================  ==========================================
``absent``       nothing: no such path                                  a new run creates it
``empty``        an empty folder                                        a new run uses it
``unstarted``    start-up files only (config.json, preprocess.pt,       a new run, or ``--resume``, starts the run
                 event files, metrics.json, temporary files):           from the beginning there
                 killed before its first checkpoint was in place
``started``      ``last.pt``, no ``final.json``                         ``--resume`` continues it; when every epoch
                                                                       is done (killed during the final
                                                                       evaluation), it runs that evaluation
``finished``     ``final.json``                                         ``--resume --epochs N`` trains it on
``foreign``      anything else                                         refused: never written into
===============  ====================================================  ==========================================

:class:`RunLock` is an ``fcntl`` lock on ``RUN/.lock``, taken before anything
is written and released when the process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from convae.errors import ConvaeError

LOCK = ".lock"
# What a run writes before its first checkpoint: its settings, preprocessing, TensorBoard events and the
# first epoch's metrics (written just before last.pt; a kill between the two must not strand the run).
_STARTUP = {"config.json", "preprocess.pt", "metrics.json", LOCK}


def _startup_file(name: str) -> bool:
    return (
        name in _STARTUP or name.startswith("events.out.tfevents.") or (name.startswith(".") and name.endswith(".tmp"))
    )


def state_of(run_dir: Path) -> str:
    """One of absent, empty, unstarted, started, finished, foreign."""
    if not run_dir.exists():
        return "absent"
    if not run_dir.is_dir():
        return "foreign"
    names = [p.name for p in run_dir.iterdir()]
    if not names or names == [LOCK]:
        return "empty"
    if "last.pt" in names:
        return "finished" if "final.json" in names else "started"
    if all(_startup_file(n) for n in names) and "config.json" in names:
        return "unstarted"
    if all(_startup_file(n) for n in names):
        return "empty"  # a lock and temporary files: nothing of a run yet
    return "foreign"


def clear_startup_files(run_dir: Path) -> None:
    """Remove what a run killed before its first checkpoint left (the lock stays: it is held)."""
    for path in run_dir.iterdir():
        if _startup_file(path.name) and path.name != LOCK:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def clear_temporary(run_dir: Path) -> None:
    """Remove the temporary files of writes a killed process never finished (the lock is held, so no
    other process is writing them)."""
    for path in run_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def saved_settings(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConvaeError(f"{path}: cannot read the run's settings ({err})") from None
    if not isinstance(data, dict):
        raise ConvaeError(f"{path}: not a run's settings")
    return data


class RunLock:
    """An exclusive lock on a run directory (created if absent) for the life of this process's run."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.created = False
        self._file = None

    def acquire(self) -> RunLock:
        try:
            self.run_dir.mkdir(parents=True)
            self.created = True
        except FileExistsError:
            if not self.run_dir.is_dir():
                raise ConvaeError(f"{self.run_dir}: is a file, not a run directory") from None
        except OSError as err:
            raise ConvaeError(f"{self.run_dir}: cannot create the run directory ({err.strerror})") from None
        path = self.run_dir / LOCK
        try:
            self._file = open(path, "a+")  # noqa: SIM115  (held open for the whole run)
        except OSError as err:
            raise ConvaeError(f"{path}: cannot write ({err.strerror})") from None
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            pid = self._file.read().strip() or "unknown"
            self._file.close()
            self._file = None
            raise ConvaeError(
                f"{self.run_dir} is in use by another convae process (pid {pid}); wait for it, or give another --out"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()
        return self

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
