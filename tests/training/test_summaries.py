import glob

import torch
from helpers import write_npz
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convae.config import resolve_config
from convae.training.summaries import make_grid
from convae.training.train import train


def _accumulators(run_dir):
    accs = []
    for path in sorted(glob.glob(f"{run_dir}/events.out.tfevents.*")):
        acc = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
        acc.Reload()
        accs.append(acc)
    return accs


def test_every_kind_of_summary_is_readable_by_tensorboard(tmp_path):
    data = f"npy:{write_npz(tmp_path / 'd.npz')}"
    run = tmp_path / "run"
    config = resolve_config(
        dict(
            data=data,
            arch="conv(8,3,stride=2) bn relu maxpool(2) dense(6)",  # max-unpooling in the traced graph too
            epochs=2,
            batch_size=16,
            noise="masking:0.2",
            out=str(run),
            quiet=True,
            embedding_samples=20,
        )
    )
    train(config)
    accs = _accumulators(run)
    tags = {kind: set() for kind in ("scalars", "images", "histograms")}
    graph = False
    hparams = set()
    for acc in accs:
        t = acc.Tags()
        for kind in tags:
            tags[kind] |= set(t[kind])
        graph |= t["graph"]
        hparams |= set(acc.summary_metadata)
    assert {"loss/train", "loss/val", "loss/val_train_mode", "val/psnr", "val/mse", "lr", "images_per_s"} <= tags[
        "scalars"
    ]
    assert {"images/input", "images/noisy_input", "images/reconstruction"} <= tags["images"]
    hist = tags["histograms"]
    assert any(t.startswith("weights/") for t in hist)
    assert any(t.startswith("gradients/") for t in hist)
    assert any(t.startswith("activations/") for t in hist)
    assert any(t.endswith("running_mean") for t in hist) and any(t.endswith("running_var") for t in hist)
    assert graph
    assert "_hparams_/session_start_info" in hparams
    # The loss scalar has one point per epoch.
    main = next(acc for acc in accs if "loss/val" in acc.Tags()["scalars"])
    assert len(main.Scalars("loss/val")) == 2
    # The embedding projector: codes with labels and thumbnails.
    projector = (run / "projector_config.pbtxt").read_text()
    assert "metadata_path" in projector and "sprite" in projector
    assert len(glob.glob(f"{run}/*/codes/metadata.tsv")) == 1


def test_make_grid_layout():
    images = torch.rand(10, 1, 4, 5)
    grid = make_grid(images, columns=4, pad=1)
    assert grid.shape == (1, 3 * 5 + 1, 4 * 6 + 1)
    assert torch.equal(grid[:, 1:5, 1:6], images[0])


def test_signals_are_plotted_and_volumes_shown_by_their_middle_slice(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {1: rng.random((40, 2, 31)), 3: rng.random((40, 1, 5, 7, 9))}
    for dims, x in arrays.items():
        np.save(tmp_path / f"{dims}.npy", x.astype(np.float32))
        run = tmp_path / f"run{dims}"
        settings = dict(
            data=f"npy:{tmp_path / f'{dims}.npy'}", spatial_dims=dims, arch="conv(4,3,stride=2) relu dense(4)"
        )
        train(resolve_config({**settings, "epochs": 1, "batch_size": 16, "out": str(run), "quiet": True}))
        images = {tag for acc in _accumulators(run) for tag in acc.Tags()["images"]}
        if dims == 1:
            assert "signals" in images and "images/input" not in images
        else:
            assert {"images/input", "images/reconstruction"} <= images
            acc = next(a for a in _accumulators(run) if "images/input" in a.Tags()["images"])
            grid = acc.Images("images/input")[-1]
            assert grid.height > 7 and grid.width > 9  # slices of 7x9, on a grid
