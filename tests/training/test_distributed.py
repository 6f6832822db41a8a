"""Multi-process training with torchrun on CPU (gloo)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import write_npz

from convae import checkpoint
from convae.config import resolve_config
from convae.training.objectives import nt_xent, projection_head
from convae.training.train import train

# Settings under which 2 processes and 1 process compute the same thing: the same
# global batch and seed (convae splits each batch over the processes), float32
# (--amp false: bf16 rounding differs with the per-process batch shapes), and no
# per-process randomness or statistics: no dropout, no input noise, no batch norm
# (it is per process on CPU; --sync-bn on GPUs).
ARCH = "conv(8,3,stride=2) relu conv(8,3,stride=2) relu dense(6)"


def _torchrun(args, tmp_path, nproc=2, script=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    target = [str(script)] if script else ["-m", "convae"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return f"npy:{write_npz(tmp_path_factory.mktemp('dist') / 'd.npz', n=96)}"


def _flags(settings):
    return [f for key, value in settings.items() for f in (f"--{key.replace('_', '-')}", str(value).lower())]


def test_two_processes_match_one(data, tmp_path):
    settings = dict(data=data, arch=ARCH, epochs=2, batch_size=16, lr=0.003, device="cpu", threads=1, amp=False)
    settings.update(histograms=False, embedding_samples=0)
    result = _torchrun(["train", *_flags(settings), "--quiet", "--out", str(tmp_path / "ddp")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    train(resolve_config({**settings, "quiet": True, "out": str(tmp_path / "single")}))
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    for a, b in zip(ddp, single):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    w_ddp = checkpoint.load(tmp_path / "ddp" / "last.pt")["model"]
    w_one = checkpoint.load(tmp_path / "single" / "last.pt")["model"]
    assert w_ddp.keys() == w_one.keys()  # the unwrapped model: no "module." prefixes
    for key in w_one:
        assert torch.allclose(w_ddp[key].float(), w_one[key].float(), atol=1e-4), key
    # Only rank 0 wrote: one set of event files, one progress of checkpoints.
    assert len(list((tmp_path / "ddp").glob("events.out.tfevents.*"))) == 2  # scalars + hparams


def test_contrastive_head_trains_under_ddp(data, tmp_path):
    # The head is wrapped with the model: DDP averages its gradients too, and rank 0 saves it.
    settings = dict(data=data, arch=ARCH, epochs=1, batch_size=16, device="cpu", threads=1, contrastive=1.0)
    settings.update(contrastive_head=4, histograms=False, embedding_samples=0)
    result = _torchrun(["train", *_flags(settings), "--quiet", "--out", str(tmp_path / "ddp")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = checkpoint.load(tmp_path / "ddp" / "last.pt")
    assert state["head"]["2.weight"].shape == (4, 256) and state["metrics"][0]["train_contrastive"] > 0


def test_batch_norm_per_process_and_sync_bn_on_cpu(data, tmp_path):
    common = [
        "train",
        "--data",
        data,
        "--arch",
        "conv(8,3,stride=2) bn relu dense(6)",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--quiet",
        "--device",
        "cpu",
        "--embedding-samples",
        "0",
    ]
    result = _torchrun([*common, "--out", str(tmp_path / "bn")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    result = _torchrun([*common, "--out", str(tmp_path / "sync"), "--sync-bn", "true"], tmp_path)
    assert result.returncode != 0
    assert "--sync-bn needs CUDA devices" in result.stderr
    assert not (tmp_path / "sync").exists()


def test_resume_with_another_process_count(data, tmp_path):
    common = [
        "--data",
        data,
        "--arch",
        ARCH,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--quiet",
        "--device",
        "cpu",
        "--histograms",
        "false",
        "--embedding-samples",
        "0",
    ]
    single = [sys.executable, "-m", "convae", "train", *common, "--out", str(tmp_path / "run"), "--epochs", "1"]
    assert subprocess.run(single, capture_output=True, timeout=300).returncode == 0
    # trained on to a second epoch by two processes
    result = _torchrun(["train", "--resume", str(tmp_path / "run"), "--epochs", "2"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint.load(tmp_path / "run" / "last.pt")["epoch"] == 2


def test_a_failing_rank_ends_the_job_with_its_message(data, tmp_path):
    script = Path(__file__).parents[1] / "scripts" / "fail_on_rank.py"
    args = [
        "1",
        "3",
        "--",
        "train",
        "--data",
        data,
        "--arch",
        ARCH,
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
    ]
    started = time.monotonic()
    result = _torchrun(args, tmp_path, script=script)
    assert result.returncode != 0
    assert "convae: error (rank 1): planted failure at step 3" in result.stderr
    assert time.monotonic() - started < 120  # ended, not hung
    assert not (tmp_path / "run").exists()  # failed before the first checkpoint: nothing left


@pytest.mark.parametrize("total", [8, 7])  # 7: shards of 4 and 3 rows, as a last partial batch
def test_contrastive_negatives_span_the_processes(tmp_path, total):
    # Each process's views meet the other process's as negatives: the term and the gradients
    # DDP averages are those of one process on the whole batch.
    script = Path(__file__).parents[1] / "scripts" / "contrastive_shards.py"
    result = _torchrun([str(total), str(tmp_path)], tmp_path, script=script)
    assert result.returncode == 0, result.stderr[-3000:]
    # the reference on one thread, as the ranks run (OMP_NUM_THREADS=1): on two threads the head's
    # gradients are summed in another order, 2e-6 away
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        head = projection_head(5, 3)
        views = torch.randn(2, total, 5)
        term = nt_xent(head(views[0]), head(views[1]), 0.5)
        term.backward()
    finally:
        torch.set_num_threads(threads)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.allclose(got["term"], term, atol=1e-6)
        for name, param in head.named_parameters():
            assert torch.allclose(got["grads"][name], param.grad, atol=1e-6), (rank, name)


def test_two_processes_streaming_their_own_rows_match_one(tmp_path):
    import numpy as np
    from helpers import blobs

    np.save(tmp_path / "x.npy", blobs(96))
    settings = dict(data=f"npy:{tmp_path / 'x.npy'}", arch=ARCH, epochs=2, batch_size=16, lr=0.003, device="cpu")
    settings.update(threads=1, amp=False, histograms=False, embedding_samples=0, workers=1)
    flags = _flags({**settings, "placement": "stream"})
    result = _torchrun(["train", *flags, "--quiet", "--out", str(tmp_path / "ddp")], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    train(resolve_config({**settings, "placement": "host", "quiet": True, "out": str(tmp_path / "single")}))
    w_ddp = checkpoint.load(tmp_path / "ddp" / "last.pt")["model"]
    w_one = checkpoint.load(tmp_path / "single" / "last.pt")["model"]
    for key in w_one:
        assert torch.allclose(w_ddp[key].float(), w_one[key].float(), atol=1e-4), key
