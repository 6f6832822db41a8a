import json
import math

import pytest
import torch
from helpers import write_npz

from convae import checkpoint
from convae.config import resolve_config
from convae.errors import ConvaeError
from convae.objectives import Contrastive
from convae.preprocess import Augment
from convae.run import load_run
from convae.runtime import Speed
from convae.train import prepare, train
from convae.trainer import Trainer, batch_norm_lag, epoch_seeds

ARCH = "conv(8,3,stride=2) bn relu conv(16,3,stride=2) bn relu dense(8)"


@pytest.fixture
def npz(tmp_path):
    return f"npy:{write_npz(tmp_path / 'blobs.npz')}"


def _config(npz, tmp_path, name="run", **over):
    settings = dict(data=npz, arch=ARCH, epochs=3, batch_size=16, lr=3e-3, out=str(tmp_path / name), quiet=True)
    settings.update(over)
    return resolve_config(settings)


def test_run_directory_contents(npz, tmp_path):
    result = train(_config(npz, tmp_path))
    run = tmp_path / "run"
    for name in ("config.json", "preprocess.pt", "last.pt", "best.pt", "metrics.json", "final.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]  # it learns
    assert json.loads((run / "config.json").read_text())["arch"] == ARCH
    assert result["final"]["val_mse"] > 0
    model, norm, config = load_run(run)
    assert config.epochs == 3 and norm.mode == "unit" and not model.training


def test_resume_matches_uninterrupted_run(npz, tmp_path):
    # Every source of randomness: shuffling, input noise, augmentation, dropout.
    extra = {"noise": "gaussian:0.1", "augment": "flip+shift:1", "arch": ARCH + " dropout(0.1)"}
    straight = train(_config(npz, tmp_path, "straight", **extra))

    steps_per_epoch = straight["metrics"][0]["step"]

    def interrupt(step):
        if step == steps_per_epoch + 2:  # in the middle of epoch 2
            raise KeyboardInterrupt

    config = _config(npz, tmp_path, "interrupted", **extra)
    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=interrupt)
    assert checkpoint.load(tmp_path / "interrupted" / "last.pt")["epoch"] == 1
    resumed = train(resume=tmp_path / "interrupted")
    assert resumed["epochs"] == 3
    a = checkpoint.load(tmp_path / "straight" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "interrupted" / "last.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["val_loss"] for m in straight["metrics"]] == [m["val_loss"] for m in resumed["metrics"]]


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
    with pytest.raises(ConvaeError, match="contrastive head in one and not the other"):
        plain.load_state(a)


def test_contrastive_views_feed_the_term_and_the_images_are_reconstructed(npz, tmp_path):
    config = _config(npz, tmp_path, contrastive=0.5, contrastive_head=4, contrastive_crop=0.5)
    trainer = Trainer(config, tmp_path, prepare(config), torch.device("cpu"))
    raw = trainer._rows(torch.arange(6))
    inputs, target = trainer._prepare_batch(raw, torch.Generator().manual_seed(0), augment=True)
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


def test_failure_before_first_checkpoint_leaves_nothing(npz, tmp_path):
    with pytest.raises(ConvaeError, match="layer 1 'conv\\(8,9,padding=valid\\)'"):
        train(_config(npz, tmp_path, arch="conv(8,9,padding=valid) dense(3)"))
    assert not (tmp_path / "run").exists()

    def boom(step):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(npz, tmp_path), on_step=boom)
    assert not (tmp_path / "run").exists()


def test_refuses_to_overwrite_a_run(npz, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "something").write_text("x")
    with pytest.raises(ConvaeError, match="already exists and is not a convae run directory"):
        train(_config(npz, tmp_path))


@pytest.mark.parametrize("normalize, loss", [("standardize", "l1"), ("zca", "mse"), ("unit", "bce")])
def test_normalizations_and_losses_train(npz, tmp_path, normalize, loss):
    result = train(
        _config(npz, tmp_path, normalize=normalize, loss=loss, epochs=2, optimizer="adamw", schedule="cosine")
    )
    metrics = result["metrics"]
    assert all(m["val_mse"] == m["val_mse"] for m in metrics)  # finite, not NaN
    model, norm, _ = load_run(tmp_path / "run")
    assert norm.mode == normalize
    assert model.config.output == ("sigmoid" if normalize == "unit" else "identity")


def test_speed_settings_are_recorded_for_resume(npz, tmp_path):
    from convae.runtime import fits_on_device

    train(_config(npz, tmp_path, epochs=1, amp=False, channels_last=False))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["amp"] is False and saved["channels_last"] is False
    train(_config(npz, tmp_path, "auto", epochs=1))
    auto = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert auto["channels_last"] is True and isinstance(auto["amp"], bool)  # decided, then written down
    assert auto["compile"] is False  # compiling is slower on CPUs
    assert fits_on_device(10**12, torch.device("cpu"))


def test_speed_defaults_on_a_gpu(monkeypatch):
    from convae.runtime import speed_settings

    # What the trainer would choose on a CUDA device, decided without one.
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr("convae.runtime.can_compile_for", lambda device: True)
    assert speed_settings(None, None, None, cuda, 1, images=True) == Speed(True, True, "reduce-overhead")
    assert speed_settings(None, None, None, cuda, 1, images=False) == Speed(False, True, "reduce-overhead")
    monkeypatch.setattr("convae.runtime.can_compile_for", lambda device: False)  # pre-Volta, or no Triton
    assert speed_settings(None, None, None, cuda, 1, images=True) == Speed(True, True, False)
    monkeypatch.setattr("convae.runtime.can_compile_for", lambda device: True)
    # under DDP: not measured, so not compiled
    assert speed_settings(None, None, None, cuda, 2, images=True) == Speed(True, True, False)
    # the user's choice wins
    assert speed_settings(None, False, "max-autotune", cuda, 2, images=True) == Speed(True, False, "max-autotune")


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
    original = Augment.apply

    def counting(self, x, *args, **kwargs):
        calls.append(len(x))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(Augment, "apply", counting)
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


def _compile_with(monkeypatch, backend):
    """torch.compile through Dynamo with another backend: the trainer's path, without inductor's cost."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, mode=None: compile_(net, backend=backend))


def _no_c_compiler(graph, example_inputs):
    raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")


def _counting_compiles(monkeypatch):
    """The graphs Dynamo hands its backend, run as they are."""
    graphs = []

    def counting(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    _compile_with(monkeypatch, counting)
    return graphs


@pytest.mark.parametrize("extra", [{}, {"contrastive": 0.5, "contrastive_head": 4}])
def test_compile_is_tried_on_one_batch_and_leaves_the_model_as_it_was(npz, tmp_path, monkeypatch, extra):
    graphs = _counting_compiles(monkeypatch)
    config = _config(npz, tmp_path, compile=True, **extra)
    prepared = prepare(config)
    before = {name: b.clone() for name, b in prepared.model.named_buffers()}
    trainer = Trainer(config, tmp_path, prepared, torch.device("cpu"))
    assert graphs and trainer.net is not trainer.model and trainer.compile is True  # compiled and run once
    after = dict(trainer.model.named_buffers())
    for name, b in before.items():
        assert torch.equal(b, after[name]), name  # the trial's batch-norm update was put back
    assert all(p.grad is None for p in trainer.params)  # the model's and the contrastive head's


def test_compile_that_fails_falls_back_when_automatic_and_stops_when_asked(npz, tmp_path, monkeypatch, capsys):
    _compile_with(monkeypatch, _no_c_compiler)
    failed = r"torch.compile failed \(RuntimeError: Failed to find C compiler"
    with pytest.raises(ConvaeError, match=failed + r".*--compile false"):
        train(_config(npz, tmp_path, "asked", compile=True))
    assert not (tmp_path / "asked").exists()
    # What a GPU would choose on its own (reduce-overhead), failing the same way: eager, with a warning.
    monkeypatch.setattr("convae.runtime.speed_settings", lambda *args: Speed(False, False, "reduce-overhead"))
    result = train(_config(npz, tmp_path, "auto", epochs=1))  # quiet: progress silenced, warnings not
    assert "warning: torch.compile failed (RuntimeError: Failed to find C compiler" in capsys.readouterr().err
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["compile"] is False
    assert result["epochs"] == 1


def test_contrastive_step_compiles_with_its_head(npz, tmp_path, monkeypatch):
    graphs = _counting_compiles(monkeypatch)
    result = train(_config(npz, tmp_path, compile=True, contrastive=0.5, contrastive_head=4, epochs=1))
    assert graphs and json.loads((tmp_path / "run" / "config.json").read_text())["compile"] is True
    assert result["metrics"][0]["train_contrastive"] > 0


def test_compiled_steps_see_one_batch_shape(npz, tmp_path, monkeypatch):
    _compile_with(monkeypatch, "eager")
    sizes = {}
    for compile_ in (False, "reduce-overhead"):
        config = _config(npz, tmp_path, compile=compile_, batch_size=20)
        prepared = prepare(config)
        n = len(prepared.train_idx)
        assert n % 20 >= 2  # a smaller last batch exists
        sizes[compile_] = Trainer(config, tmp_path, prepared, torch.device("cpu")).steps_per_epoch
    assert sizes[False] == n // 20 + 1 and sizes["reduce-overhead"] == n // 20


def test_without_a_validation_split_a_capped_spread_of_training_images_stands_in(npz, tmp_path):
    config = _config(npz, tmp_path, val_fraction=0.0)
    prepared = prepare(config)
    trainer = Trainer(config, tmp_path, prepared, torch.device("cpu"))
    assert torch.equal(trainer._val_idx(), trainer.train_idx)  # few images: all of them
    config.val_samples = 7
    subset = trainer._val_idx()
    assert 4 <= len(subset) <= 7  # every k-th image, k chosen to keep it under the cap
    assert subset[0] == trainer.train_idx[0] and subset[-1] > trainer.train_idx[len(trainer.train_idx) // 2]


def test_a_large_validation_split_is_capped_too(npz, tmp_path):
    config = _config(npz, tmp_path, val_fraction=0.5, val_samples=10)
    trainer = Trainer(config, tmp_path, prepare(config), torch.device("cpu"))
    assert len(trainer.val_idx) == 43 and 8 <= len(trainer._val_idx()) <= 10  # half of the 86 not held out
    config.val_samples = 0  # all of it
    assert torch.equal(trainer._val_idx(), trainer.val_idx)


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


def test_resume_with_more_epochs_trains_a_finished_run_on_with_a_new_schedule(npz, tmp_path, capsys):
    train(_config(npz, tmp_path, "a", epochs=2))
    finished = r"already finished its 2 epochs \(10 steps\); pass --epochs N or --max-steps N"
    with pytest.raises(ConvaeError, match=finished):
        train(resume=tmp_path / "a")
    with pytest.raises(ConvaeError, match="has trained 2 epochs already; --epochs must be more"):
        train(resume=tmp_path / "a", epochs=1)
    before = checkpoint.load(tmp_path / "a" / "last.pt")
    extended = train(resume=tmp_path / "a", epochs=4)
    assert (
        "training on from step 10 (epoch 2); the onecycle learning-rate schedule is planned anew"
        in capsys.readouterr().err
    )
    assert [m["epoch"] for m in extended["metrics"]] == [1, 2, 3, 4]
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    steps = before["step"]
    assert saved["epochs"] == 4 and saved["schedule_start"] == steps
    # a new one-cycle over the two added epochs: up near the peak again, then down to almost nothing
    rates = [m["lr"] for m in extended["metrics"]]
    assert rates[1] < 0.05 * 3e-3 and rates[2] > 10 * rates[1] and rates[3] < 0.05 * 3e-3
    # stopped during the extension and resumed: the same weights as the extension that never stopped
    train(_config(npz, tmp_path, "b", epochs=2))

    def interrupt(step):
        if step == 3 * steps // 2 + 1:  # in epoch 4 (steps is two epochs' worth)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(resume=tmp_path / "b", epochs=4, on_step=interrupt)
    train(resume=tmp_path / "b")
    a = checkpoint.load(tmp_path / "a" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_the_cli_takes_epochs_and_quiet_and_refuses_other_settings(npz, tmp_path, capsys):
    from convae.cli import main

    train(_config(npz, tmp_path, epochs=1))
    run = str(tmp_path / "run")
    assert main(["train", "--resume", run, "--epochs", "2", "--quiet"]) == 0
    assert "epoch 2/2" not in capsys.readouterr().err  # --quiet is honoured on resume
    assert main(["train", "--resume", run, "--lr", "0.1"]) == 2
    assert (
        "give no other settings (only --epochs or --max-steps to train it on, or --quiet): not lr"
        in capsys.readouterr().err
    )


def test_fit_takes_settings_as_the_cli_does_and_reports_each_epoch(npz, tmp_path):
    import convae

    seen = []
    run = convae.fit(
        npz, arch=ARCH, epochs=2, batch_size=16, out=str(tmp_path / "fit"), quiet=True, on_epoch=seen.append
    )
    assert isinstance(run, convae.Run) and run.config.epochs == 2 and run.config.optimizer == "adamw"
    assert [m["epoch"] for m in seen] == [1, 2] and seen[-1]["val_mse"] > 0
    assert run.final["val_mse"] > 0 and run.encode(run.reconstruct(np_blobs(npz))).shape[1:] == (8,)


def np_blobs(npz):
    import numpy as np

    return np.load(npz.removeprefix("npy:"))["x"][:4, None].astype("float32") / 255


def test_load_on_a_device_that_is_not_there_says_so(npz, tmp_path, monkeypatch):
    import convae

    train(_config(npz, tmp_path, epochs=1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConvaeError, match="device 'cuda' asked for, but CUDA is not available"):
        convae.load(tmp_path / "run", device="cuda")


@pytest.mark.parametrize("convs", [4, 5])
def test_bf16_autocast_trains_convolutions_over_one_pixel_maps(tmp_path, convs):
    # Issue 34 saw the loss turn NaN at a random early step under the CPU's default bf16 autocast for this
    # spec (strided convolutions down to 1x1 maps, then a dense code); not reproduced on this machine since
    # (benchmarks/RESULTS.md). Thirty-odd steps with autocast forced on: every loss finite, and it learns.
    arch = " ".join(["conv(4,3,stride=2)"] * convs) + " dense(4)"
    settings = dict(data="digits", arch=arch, epochs=3, optimizer="adam", schedule="constant", lr=1e-3, amp=True)
    result = train(resolve_config({**settings, "out": str(tmp_path / "run"), "quiet": True, "histograms": False}))
    losses = [m["train_loss"] for m in result["metrics"]]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["amp"] is True


def test_fit_trains_from_an_array_and_a_dataset_and_says_what_eval_needs(tmp_path, capsys):
    import numpy as np

    import convae
    from convae.cli import main

    signals = np.sin(np.linspace(0, 6, 97))[None, None] * np.random.default_rng(0).random((48, 1, 1))
    run = convae.fit(
        signals.astype(np.float32),
        spatial_dims=1,
        arch="conv(4,3,stride=2) relu dense(4)",
        epochs=2,
        batch_size=16,
        out=str(tmp_path / "sig"),
        quiet=True,
        histograms=False,
    )
    assert run.model.input_shape == (1, 97) and run.config.data == "python"
    assert run.reconstruct(signals[:3].astype(np.float32)).shape == (3, 1, 97)  # odd length, exact
    assert main(["eval", str(tmp_path / "sig")]) == 2
    assert "trained on data passed from Python; give the data to use (--data)" in capsys.readouterr().err
