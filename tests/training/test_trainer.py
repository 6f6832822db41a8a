"""The loop: contrastive steps, non-finite stops, early stopping, progress, augmentation, seeds, validation rows."""

import math

import pytest
import torch
from helpers import small_config

from convae import checkpoint
from convae.config import resolve_config
from convae.errors import ConvaeError
from convae.inference.run import load_run
from convae.training import batches
from convae.training.batches import monitored
from convae.training.objectives import Contrastive
from convae.training.train import prepare, train
from convae.training.trainer import Trainer, batch_norm_lag, epoch_seeds

_config = small_config


def test_contrastive_term_trains_a_head_kept_with_the_run_and_resumes_exactly(npz, tmp_path):
    extra = {"contrastive": 0.5, "contrastive_head": 4, "contrastive_crop": 0.5, "noise": "gaussian:0.1"}
    straight = train(_config(npz, tmp_path, "straight", **extra))
    terms = [m["train_contrastive"] for m in straight["metrics"]]
    # between a perfect match of the views (0) and codes that tell nothing apart (log of the 2B - 1 candidates)
    assert all(0 < t < math.log(2 * 16 - 1) for t in terms)
    steps_per_epoch = straight["metrics"][0]["step"]

    def interrupt(step):
        if step == steps_per_epoch + 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(npz, tmp_path, "interrupted", **extra), on_step=interrupt)
    resumed = train(resume=tmp_path / "interrupted")
    a = checkpoint.load(tmp_path / "straight" / "last.pt")
    b = checkpoint.load(tmp_path / "interrupted" / "last.pt")
    for part in ("model", "head"):  # the crops' generator, the head and its optimizer state all resume
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert [m["train_contrastive"] for m in resumed["metrics"]] == terms
    model, _, config = load_run(tmp_path / "straight")  # the autoencoder alone: the head is for training
    assert config.contrastive == 0.5 and not any("head" in k for k in model.state_dict())
    # a run without the term does not take a checkpoint with a head, nor the other way round
    config = _config(npz, tmp_path, "plain")
    plain = Trainer(config, tmp_path / "plain", prepare(config), torch.device("cpu"))
    with pytest.raises(ConvaeError, match="a second network .contrastive head, segmenter. in one only"):
        plain.load_state(a)


def test_contrastive_views_feed_the_term_and_the_images_are_reconstructed(npz, tmp_path):
    config = _config(npz, tmp_path, contrastive=0.5, contrastive_head=4, contrastive_crop=0.5)
    trainer = Trainer(config, tmp_path, prepare(config), torch.device("cpu"))
    raw = trainer.feed.rows(torch.arange(6))
    batch = trainer.pipeline(raw, torch.Generator().manual_seed(0), train=True)
    inputs, target = batch.input, batch.target
    images = trainer.p.normalizer.transform(raw)
    assert torch.equal(target, images) and inputs.shape == (18, *images.shape[1:])
    assert torch.equal(inputs[:6], images) and not torch.equal(inputs[6:12], inputs[12:])  # two other crops
    trainer.net.eval()  # batch norm's running statistics, so each sample's output is its own
    with torch.no_grad():
        out, projected = trainer.net(inputs)
        assert torch.allclose(out, trainer.model(images), atol=1e-6)  # the images', not the crops'
        assert torch.allclose(projected, trainer.head(trainer.model.encode(inputs[6:]).flatten(1)), atol=1e-6)


def test_contrastive_term_needs_2d_images_and_sane_settings(tmp_path):
    import convae

    config = resolve_config({"contrastive": 1.0})
    with pytest.raises(ConvaeError, match="crops of 2-D images"):
        Contrastive(config, convae.build("conv(4,3,stride=2) dense(4)", (1, 64)))
    for bad, message in (
        ({"contrastive": -1.0}, "contrastive must be >= 0"),
        ({"contrastive_crop": 0.0}, "contrastive_crop must be in"),
        ({"contrastive_head": 0}, "contrastive_head must be a positive integer"),
        ({"contrastive_jitter": 1.5}, "contrastive_jitter must be in"),
        ({"contrastive_tau": 0.0}, "contrastive_tau must be positive"),
    ):
        with pytest.raises(ConvaeError, match=message):
            resolve_config(bad)


def _nan_weight(model):
    model.encoder[0].down.conv.weight.fill_(float("nan"))  # the next loss is NaN


def _inf_running_var(model):
    model.encoder[0].post[0].running_var.fill_(float("inf"))  # the loss stays finite, the statistics do not


@pytest.mark.parametrize(
    "poison, message",
    [
        (_nan_weight, r"loss became non-finite at step 8 \(epoch 2\).*last good checkpoint"),
        (_inf_running_var, r"weights became non-finite in epoch 2 \(encoder.0.post.0.running_var\).*last good"),
    ],
)
def test_non_finite_loss_or_weights_stop_and_keep_the_last_good_checkpoint(npz, tmp_path, monkeypatch, poison, message):
    holder = {}
    original = Trainer.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        holder["model"] = self.model

    def hook(step):
        if step == 7:  # epoch 2 (5 steps per epoch)
            with torch.no_grad():
                poison(holder["model"])

    monkeypatch.setattr(Trainer, "__init__", spy)
    with pytest.raises(ConvaeError, match=message):
        train(_config(npz, tmp_path), on_step=hook)
    last = checkpoint.load(tmp_path / "run" / "last.pt")  # never a non-finite checkpoint on disk
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_early_stopping(npz, tmp_path):
    result = train(_config(npz, tmp_path, arch="conv(4,3,stride=2) relu dense(4)", epochs=10, lr=1e-30, patience=2))
    assert result["epochs"] == 3  # the best epoch, then two without improvement


def test_progress_bar_on_a_terminal(npz, tmp_path, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    config = _config(npz, tmp_path, epochs=2)
    config.quiet = False
    train(config)
    text = terminal.getvalue()
    assert "loss=" in text and "img_s=" in text and "step" in text
    assert "<" in text  # tqdm's elapsed<remaining (the ETA)
    # each epoch's line is written above the bar as the epoch ends, not held back
    assert "epoch 1/2  train" in text and "epoch 2/2  train" in text


def test_augmentation_touches_training_steps_only(npz, tmp_path, monkeypatch):
    calls = []
    original = batches.augment

    def counting(spec, x, *args, **kwargs):
        calls.append(len(x))
        return original(spec, x, *args, **kwargs)

    monkeypatch.setattr(batches, "augment", counting)
    result = train(_config(npz, tmp_path, augment="flip"))
    # Validation, image grids and the graph see the data as it is.
    assert len(calls) == result["metrics"][-1]["step"]
    with pytest.raises(ConvaeError, match="augment"):
        train(_config(npz, tmp_path, "bad", augment="rotate"))


def test_epoch_seeds_share_the_permutation_but_not_the_noise():
    seeds = [epoch_seeds(3, 5, rank) for rank in range(4)]
    assert len({shuffle for shuffle, _ in seeds}) == 1  # one permutation for every process
    assert len({local for _, local in seeds}) == 4  # dropout/noise/augmentation drawn per process
    assert seeds[0][0] == seeds[0][1]  # one process: a single seed, as before
    assert epoch_seeds(3, 6)[0] != epoch_seeds(3, 5)[0] != epoch_seeds(4, 5)[0]


def test_without_a_validation_split_a_capped_spread_of_training_images_stands_in(npz, tmp_path):
    config = _config(npz, tmp_path, val_fraction=0.0)
    prepared = prepare(config)
    trainer = Trainer(config, tmp_path, prepared, torch.device("cpu"))
    assert torch.equal(trainer.monitored, trainer.train_idx)  # few images: all of them
    subset = monitored(trainer.val_idx, trainer.train_idx, 7)
    assert 4 <= len(subset) <= 7  # every k-th image, k chosen to keep it under the cap
    assert subset[0] == trainer.train_idx[0] and subset[-1] > trainer.train_idx[len(trainer.train_idx) // 2]


def test_a_large_validation_split_is_capped_too(npz, tmp_path):
    config = _config(npz, tmp_path, val_fraction=0.5, val_samples=10)
    trainer = Trainer(config, tmp_path, prepare(config), torch.device("cpu"))
    assert len(trainer.val_idx) == 43 and 8 <= len(trainer.monitored) <= 10  # half of the 86 not held out
    assert torch.equal(monitored(trainer.val_idx, trainer.train_idx, 0), trainer.val_idx)  # 0: all of it


def test_max_steps_ends_the_run_mid_epoch_and_the_schedule_with_it(npz, tmp_path):
    result = train(_config(npz, tmp_path, epochs=5, max_steps=8))  # 5 steps an epoch (77 samples)
    assert [(m["epoch"], m["step"]) for m in result["metrics"]] == [(1, 5), (2, 8)]
    assert result["metrics"][-1]["lr"] < 0.1 * 3e-3  # the one-cycle ended with the run, not at epoch 5
    with pytest.raises(ConvaeError, match="already finished"):
        train(resume=tmp_path / "run")
    more = train(resume=tmp_path / "run", max_steps=14)
    assert [m["step"] for m in more["metrics"]] == [5, 8, 13, 14]


def test_batch_norm_lag_warns_only_when_eval_mode_is_the_worse():
    # Running statistics behind the weights: eval mode far worse than each batch's own statistics.
    warning = batch_norm_lag(0.09, 0.03)
    assert warning and "3.0 times" in warning and "running statistics lag" in warning
    assert batch_norm_lag(0.05, 0.03) is None  # within a factor of two
    # Train mode the worse, as under --contrastive (training batches are crops): not a lag.
    assert batch_norm_lag(0.0115, 0.035) is None
