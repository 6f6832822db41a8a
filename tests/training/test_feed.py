"""Where training data lives (convae.training.feed): every placement computes the same run."""

import os

import numpy as np
import pytest
import torch
from helpers import blobs

from convae import checkpoint
from convae.config import resolve_config
from convae.errors import ConvaeError
from convae.training import feed
from convae.training.train import train

ARCH = "conv(8,3,stride=2) relu conv(8,3,stride=2) relu dense(6)"


@pytest.fixture
def npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, blobs(96, channels=3))
    return path


def _config(npy, tmp_path, name, **over):
    settings = dict(data=f"npy:{npy}", arch=ARCH, epochs=3, batch_size=16, lr=3e-3, quiet=True, histograms=False)
    return resolve_config({**settings, "out": str(tmp_path / name), **over})


def test_placement_auto_keeps_what_fits_in_memory_and_streams_the_rest(monkeypatch):
    cpu = torch.device("cpu")
    assert feed.choose_placement("device", 10, False, cpu) == "host"  # on a CPU the same memory
    assert feed.choose_placement("stream", 10, False, cpu) == "stream"
    assert feed.choose_placement("auto", 10**15, False, cpu) == "host"  # in memory already
    monkeypatch.setattr(feed, "available_memory", lambda: 4 * 10**9)
    assert feed.choose_placement("auto", 10**9, True, cpu) == "host"  # a quarter of what is free
    assert feed.choose_placement("auto", 10**9 + 1, True, cpu) == "stream"
    assert feed.choose_placement("auto", 6 * 10**8, True, cpu, world=2) == "stream"  # once per process


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_and_resident_runs_end_with_the_same_weights(npy, tmp_path, workers):
    extra = {"noise": "gaussian:0.1", "augment": "flip"}
    host = train(_config(npy, tmp_path, "host", placement="host", **extra))
    streamed = train(_config(npy, tmp_path, "stream", placement="stream", workers=workers, **extra))
    assert host["final"] == streamed["final"] and "test_mse" in host["final"]  # a held-out test split
    a = checkpoint.load(tmp_path / "host" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "stream" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_streamed_run_stopped_and_resumed_matches_one_that_never_stopped(npy, tmp_path):
    straight = train(_config(npy, tmp_path, "straight", placement="stream", workers=1))
    per_epoch = straight["metrics"][0]["step"]

    def interrupt(step):
        if step == per_epoch + 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(npy, tmp_path, "stopped", placement="stream", workers=1), on_step=interrupt)
    train(resume=tmp_path / "stopped")
    a = checkpoint.load(tmp_path / "straight" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "stopped" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_source_truncated_mid_run_stops_in_one_line_and_keeps_the_last_checkpoint(npy, tmp_path):
    def truncate(step):
        if step == 7:  # in epoch 2
            os.truncate(npy, os.path.getsize(npy) // 2)

    with pytest.raises(ConvaeError) as info:
        train(_config(npy, tmp_path, "run", placement="stream", workers=1), on_step=truncate)
    message = str(info.value)
    assert "x.npy" in message and "\n" not in message and "last good checkpoint" in message
    assert checkpoint.load(tmp_path / "run" / "last.pt")["epoch"] == 1


def test_resuming_on_a_changed_file_is_refused(npy, tmp_path):
    def stop(step):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(npy, tmp_path, "run"), on_step=stop)
    np.save(npy, blobs(96, channels=3, seed=1))
    with pytest.raises(ConvaeError, match="is not the data this run was trained on"):
        train(resume=tmp_path / "run")
