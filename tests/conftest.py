import os

import pytest
import torch
from hypothesis import settings

# Small thread pools keep the suite fast and repeatable on 2-core CI machines.
torch.set_num_threads(min(2, os.cpu_count() or 1))
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=40, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _image_cache(tmp_path_factory):
    """Decoded folders are cached in the session's temporary folder, never in the user's home;
    subprocesses (the CLI tests) inherit it."""
    os.environ["CONVAE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """One small trained run (120 labelled 8x8 blobs, 3 epochs), shared by the tests that use a run."""
    from helpers import write_npz

    from convae.config import resolve_config
    from convae.training.train import train

    tmp = tmp_path_factory.mktemp("ev")
    data = f"npy:{write_npz(tmp / 'd.npz', n=120)}"
    out = tmp / "run"
    config = resolve_config(
        dict(data=data, arch="conv(8,3,stride=2) bn relu dense(6)", epochs=3, batch_size=16, lr=3e-3)
    )
    config.out, config.quiet, config.histograms = str(out), True, False
    train(config)
    return out


@pytest.fixture
def npz(tmp_path):
    """96 labelled 8x8 blobs as an ``npy:`` source."""
    from helpers import write_npz

    return f"npy:{write_npz(tmp_path / 'blobs.npz')}"
