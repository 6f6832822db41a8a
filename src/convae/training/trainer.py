"""The training loop: one run's state and its epochs (:class:`Trainer`).

:meth:`Trainer.fit` runs :meth:`~Trainer.train_epoch`, then
:meth:`~Trainer.end_epoch` (validate, log, save the ``last`` and ``best``
checkpoints atomically) until the run's epochs are done. Every source of
randomness is reseeded from (seed, epoch) at the start of each epoch, so a
resumed run follows the path of one that never stopped. :mod:`convae.training.train`
builds a trainer and drives it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from convae import checkpoint, runtime
from convae.config import TrainConfig
from convae.data import Dataset
from convae.data.anomalies import Anomalies
from convae.data.preprocess import Normalizer
from convae.errors import ConvaeError
from convae.metrics import psnr
from convae.network.model import AutoEncoder
from convae.parsers import Augment, Noise, parse_sources
from convae.training import distributed
from convae.training.batches import Batch, BatchPipeline, capped, monitored
from convae.training.feed import Feed, read_rows, to_device
from convae.training.objectives import objective_for
from convae.training.optim import make_optimizer, make_schedule, planned_steps
from convae.training.summaries import Summaries, TrainingPictures


def epoch_seeds(seed: int, epoch: int, rank: int = 0) -> tuple[int, int]:
    """(shuffle seed, per-process seed) of an epoch.

    Every process must draw the same permutation (each takes its slice of the
    global batch), but dropout, input noise and augmentation should differ
    between processes, else each rank repeats the same masks on other samples.
    Rank 0 keeps the single-process seed, so one process computes as before.
    """
    shuffle = seed * 100_003 + epoch
    return shuffle, shuffle + 1_000_003 * rank


def batch_norm_lag(eval_loss: float, train_mode_loss: float) -> str | None:
    """A warning when the validation loss in eval mode (batch norm's running statistics) is
    more than twice that in train mode (each batch's own statistics): the running statistics
    lag the weights. Only that way round: train mode can be the worse one for reasons of its
    own, as under --contrastive, whose training batches are crops with other statistics."""
    if not eval_loss > 2 * train_mode_loss:
        return None
    return (
        f"validation loss in eval mode ({eval_loss:.4g}) is {eval_loss / max(train_mode_loss, 1e-12):.1f} times "
        f"train mode's ({train_mode_loss:.4g}): batch-norm running statistics lag the weights"
    )


@dataclass
class Prepared:
    """What a trainer needs besides its config: data splits, preprocessing and the model
    (:func:`convae.training.train.prepare` makes it, writing nothing)."""

    dataset: Dataset
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray  # held out of the training file (empty when the source has a test split)
    normalizer: Normalizer
    model: AutoEncoder
    data_low: float
    data_high: float


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    step: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0
    metrics: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """The state of one run; :func:`train` is the entry point."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        prepared: Prepared,
        device: torch.device,
        dist: distributed.Dist | None = None,
    ):
        self.config, self.run_dir, self.p, self.device = config, run_dir, prepared, device
        self.dist = dist or distributed.Dist()
        self.model = prepared.model.to(device)
        sample = prepared.dataset.x_train
        # On the device, in host memory or streamed from its file (convae.training.feed); batches by index.
        self.feed = Feed(sample, device, config.placement, config.workers, self.dist.world)
        self.data_device = self.feed.index_device
        self.train_idx = torch.as_tensor(prepared.train_idx, device=self.data_device)
        self.val_idx = torch.as_tensor(prepared.val_idx, device=self.data_device)
        self.test_idx = torch.as_tensor(prepared.test_idx, device=self.data_device)
        self.objective = objective_for(config, self.model)
        self.head = self.objective.head.to(device) if self.objective.head is not None else None
        n, world = len(self.train_idx), self.dist.world
        # batch_size is the global batch; each process takes an equal slice, so the
        # number of steps does not depend on the process count.
        self.batch = min(config.batch_size, n)
        if self.batch % world:
            raise ConvaeError(f"batch size {self.batch} does not split evenly over {world} processes")
        one_pixel = any(len(s) > 1 and all(d == 1 for d in s[1:]) for s in self.model.shapes)
        speed = runtime.speed_settings(
            config.channels_last, config.amp, config.compile, device, world, sample.ndim == 4, one_pixel
        )
        self.channels_last, self.amp, self.compile = speed.channels_last, speed.amp, speed.compile
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.sync_bn and world > 1:
            if device.type != "cuda":
                raise ConvaeError(
                    "--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm); on CPU batch norm is per process"
                )
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.pipeline = BatchPipeline(
            prepared.normalizer,
            prepared.data_low,
            prepared.data_high,
            crop=config.crop,
            noise=Noise.parse(config.noise),
            augment=Augment.parse(config.augment),
            views=self.objective.views,
            channels_last=self.channels_last,
            anomalies=Anomalies(parse_sources(config.anomaly_sources), config.anomaly_fraction)
            if config.segmenter
            else None,
        )
        # The validation rows measured (and pictured) each epoch.
        self.monitored = monitored(self.val_idx, self.train_idx, config.val_samples)
        # What the optimizer steps (after the layout and SyncBatchNorm conversions, which keep parameters).
        self.params = [*self.model.parameters(), *(self.head.parameters() if self.head is not None else [])]
        # `net` is what the training step calls: the objective's module, DDP-wrapped with several
        # processes, compiled on request. Evaluation and checkpoints use the plain `model` (and `head`).
        self.net: nn.Module = self.objective.network(self.model)
        if world > 1:
            self.net = runtime.wrap_ddp(self.net, device)
        if self.compile:
            compiled = runtime.compiled_or_eager(
                self.net, self.compile, config.compile is None, self._trial, self._warn
            )
            if compiled is None:
                self.compile = False
            else:
                self.net = compiled
        # Recorded in the config, so a resumed run computes exactly as before.
        config.channels_last, config.amp, config.compile = self.channels_last, self.amp, self.compile
        # Drop a last batch smaller than 2 samples per process (batch norm cannot train on one),
        # and any smaller last batch when compiling: a second shape would compile and capture again.
        partial = n % self.batch >= 2 * world and not self.compile
        self.steps_per_epoch = n // self.batch + (1 if partial else 0)
        self.optimizer, self.scheduler = make_optimizer(config, self.params, self.steps_per_epoch, device)
        self.state = _State()
        self.summaries: Summaries | None = None
        self.bar = None
        self.on_epoch: Callable[[dict[str, float]], None] | None = None
        # Writes that wait for the first checkpoint: a resume's settings, so that one that fails first is no change.
        self.pending: list[Callable[[], None]] = []
        self.saved = False  # whether this process has written a checkpoint

    # -- one step ------------------------------------------------------------------------------
    def _trial(self, compiled: nn.Module) -> None:
        """One training step's forward and backward through ``compiled``, leaving no trace."""
        saved = {name: b.clone() for name, b in self.model.named_buffers()}
        batch = self.pipeline(self.feed.rows(self._shard(self.train_idx[: self.batch])), train=True)
        was_training = self.model.training
        self.model.train()
        try:
            self._loss(compiled, batch, self.batch)[0].backward()
        finally:
            with torch.no_grad():
                for name, b in self.model.named_buffers():
                    b.copy_(saved[name])
            for p in self.params:
                p.grad = None
            self.model.train(was_training)

    def _loss(self, net: nn.Module, batch: Batch, total: int) -> tuple[Tensor, Tensor | None]:
        """A step's loss and extra term on this process's shard of a global batch of ``total``
        samples: the forward pass under bf16 autocast when on, the losses in float32."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = net(batch.input)
        return self.objective.loss(out, batch, total, self.dist)

    def _shard(self, batch: Tensor) -> Tensor:
        """This process's slice of a global batch (all of it in a single process)."""
        start, stop = distributed.shard_bounds(len(batch), self.dist)
        return batch[start:stop]

    # -- the loop ------------------------------------------------------------------------------
    def open_summaries(self) -> None:
        self.summaries = Summaries(str(self.run_dir), enabled=self.dist.main)
        self.pictures = TrainingPictures(
            self.summaries,
            self.model,
            self.pipeline,
            self.feed.rows,
            self.p.dataset,
            lambda: self.state.step,
            self.head if self.config.segmenter else None,
        )

    def fit(self, on_step: Callable[[int], None] | None = None) -> None:
        config = self.config
        self.open_summaries()
        if self.state.epoch == 0 and self.dist.main and not self.pictures.graph(self.monitored[:2]):
            self._log(f"TensorBoard graph left out: {len(self.model.encoder)} blocks (drawn up to 100)")
        show_bar = not config.quiet and sys.stderr.isatty() and self.dist.main
        from tqdm import tqdm

        total = planned_steps(config, self.steps_per_epoch)
        self.bar = tqdm(total=total, initial=self.state.step, disable=not show_bar, unit="step")
        try:
            while self.state.step < total:
                if config.patience is not None and self.state.bad_epochs >= config.patience:
                    self._log(f"early stopping: no validation improvement in {config.patience} epochs")
                    break
                train_loss, term, images_per_s, seconds = self.train_epoch(on_step, show_bar)
                self.end_epoch(train_loss, images_per_s, seconds, term)
        finally:
            self.bar.close()
            self.bar = None

    def train_epoch(
        self, on_step: Callable[[int], None] | None, show_bar: bool
    ) -> tuple[float, float | None, float, float]:
        """One pass over a seeded permutation of the training split (cut short where ``max_steps``
        ends the run): (loss, term, images/s, seconds)."""
        config, epoch = self.config, self.state.epoch
        seed, local = epoch_seeds(config.seed, epoch, self.dist.rank)
        torch.manual_seed(local)  # dropout and anything else drawing from the global RNG
        generator = torch.Generator(device=self.device).manual_seed(local)  # noise, augmentation, views
        # Drawn on the CPU wherever the data lives: a CUDA generator gives another permutation, which
        # made a run with its data on the GPU train on another order than the same run streamed.
        permutation = torch.randperm(len(self.train_idx), generator=torch.Generator().manual_seed(seed))
        order = self.train_idx[permutation.to(self.data_device)]
        self.model.train()
        running = torch.zeros((), device=self.device)
        running_term = torch.zeros((), device=self.device)
        first_bad = torch.full((), -1, device=self.device, dtype=torch.long)
        started, seen = time.perf_counter(), 0
        steps = min(self.steps_per_epoch, planned_steps(config, self.steps_per_epoch) - self.state.step)
        batches = [order[i * self.batch : (i + 1) * self.batch] for i in range(steps)]
        for i, (batch, raw) in enumerate(zip(batches, self.feed.batches([self._shard(b) for b in batches]))):
            loss, term = self._loss(self.net, self.pipeline(raw, generator, train=True), len(batch))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad:
                nn.utils.clip_grad_norm_(self.params, config.clip_grad)
            self.optimizer.step()
            self.scheduler.step()
            step = self.state.step + i + 1
            # Kept on the device: no host synchronisation per step.
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            running += loss.detach()
            if term is not None:
                running_term += term.detach()
            seen += len(batch)
            if on_step is not None:
                on_step(step)
            if show_bar and (i % 20 == 19 or i == steps - 1):
                if self.dist.world == 1:  # with several processes, only the epoch end checks (together)
                    self._check_finite(first_bad, epoch)
                rate = seen / max(time.perf_counter() - started, 1e-9)
                self.bar.set_postfix(epoch=epoch + 1, loss=f"{float(running) / (i + 1):.4f}", img_s=f"{rate:.0f}")
                self.bar.update(step - self.bar.n)
        self._check_finite(first_bad, epoch)
        elapsed = time.perf_counter() - started
        self.state.step += steps
        self.state.epoch += 1
        train_loss = float(distributed.all_mean(running, self.dist)) / steps
        mean_term = None
        if self.objective.term is not None:
            mean_term = float(distributed.all_mean(running_term, self.dist)) / steps
        return train_loss, mean_term, seen / elapsed, elapsed

    def _check_finite(self, first_bad: Tensor, epoch: int) -> None:
        # Every process learns of a bad step on any process, so all stop together.
        bad = int(distributed.all_max(first_bad, self.dist))
        if bad >= 0:
            kept = self._last_good()
            raise ConvaeError(
                f"loss became non-finite at step {bad} (epoch {epoch + 1}); stopped{kept}. "
                "Try a lower --lr or --clip-grad"
            )

    def _last_good(self) -> str:
        last = self.run_dir / "last.pt"
        return f"; the last good checkpoint is {last}" if last.exists() else ""

    def _check_weights(self, epoch: int) -> None:
        """Stop before saving weights or batch-norm statistics that overflowed: a finite loss does
        not prove them finite (a huge learning rate can send a running variance to inf)."""
        tensors = [*self.params, *(b for b in self.model.buffers() if b.is_floating_point())]
        bad = next((name for name, t in self._named(tensors) if not bool(torch.isfinite(t).all())), None)
        flag = distributed.all_max(torch.tensor(int(bad is not None), device=self.device), self.dist)
        if int(flag):
            kept = self._last_good()
            raise ConvaeError(
                f"weights became non-finite in epoch {epoch}{f' ({bad})' if bad else ' (on another process)'}; "
                f"stopped, nothing saved{kept}. Try a lower --lr or --clip-grad"
            )

    def _named(self, tensors: list[Tensor]) -> list[tuple[str, Tensor]]:
        names = {id(t): n for n, t in [*self.model.named_parameters(), *self.model.named_buffers()]}
        return [(names.get(id(t), "the objective's second network"), t) for t in tensors]

    def end_epoch(self, train_loss: float, images_per_s: float, seconds: float, term: float | None) -> None:
        """Validate, record the epoch's metrics, write summaries and checkpoints (main process)."""
        config, state = self.config, self.state
        epoch = state.epoch
        self._check_weights(epoch)
        changed = self.feed.changed()
        if changed:
            raise ConvaeError(f"{changed} during training; stopped in epoch {epoch}{self._last_good()}")
        val_idx = self.monitored
        val = self.validate(self._chunks(val_idx))
        val_train_mode = self.validate(self._chunks(val_idx[:2048]), train_mode=True)
        row = {
            "epoch": epoch,
            "step": state.step,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_loss_train_mode": val_train_mode["loss"],
            "val_mse": val["mse"],
            "val_psnr": val["psnr"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": images_per_s,
            "seconds": seconds,
        } | ({f"train_{self.objective.term}": term} if term is not None else {})
        state.metrics.append(row)
        improved = val["loss"] < state.best_val
        if improved:
            state.best_val, state.bad_epochs = val["loss"], 0
        else:
            state.bad_epochs += 1
        if not self.dist.main:
            return
        warning = batch_norm_lag(val["loss"], val_train_mode["loss"])
        if warning and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            self._warn(warning)
        scalars = {"loss/train": train_loss, "loss/val": val["loss"], "loss/val_train_mode": val_train_mode["loss"]}
        scalars |= {"val/mse": val["mse"], "val/psnr": val["psnr"], "lr": row["lr"], "images_per_s": images_per_s}
        if term is not None:
            scalars[f"loss/train_{self.objective.term}"] = term
        self.summaries.scalars(scalars, state.step)
        every = config.image_every or max(1, config.epochs // 4)
        if epoch == 1 or epoch % every == 0 or epoch == config.epochs:
            self.pictures.images(val_idx[:16])
        if config.histograms:
            self.summaries.histograms(self.model, self.pictures.activations(val_idx[:256]), state.step)
        ckpt = self.state_dict()
        with checkpoint.all_or_nothing():  # the epoch's record and checkpoints land together, or none of them
            for write in self.pending:
                write()
            checkpoint.write_json(self.run_dir / "metrics.json", state.metrics)
            checkpoint.save(self.run_dir / "last.pt", ckpt)
            if improved:
                checkpoint.save(self.run_dir / "best.pt", ckpt)
        self.pending, self.saved = [], True
        self._log(
            f"epoch {epoch}/{config.epochs}  train {train_loss:.5f}  val {val['loss']:.5f}  "
            f"psnr {val['psnr']:.2f} dB  {images_per_s:.0f} img/s"
        )
        if self.on_epoch is not None:
            self.on_epoch(dict(row))

    def _chunks(self, idx: Tensor, x: Any = None) -> Iterator[Tensor]:
        """Samples by index (of the training data, or of ``x``) on the device, in validation's batches:
        1024 samples, fewer for large ones (64x64 RGB: 170), so that validation's activations stay
        within what a training step needs. Rows of the training data come as its steps do: gathered
        where they live, or decoded ahead by the streaming workers (a torch Dataset's, a file's)."""
        size = max(64, min(1024, 2**21 // max(1, math.prod(self.model.input_shape))))
        if x is None:
            yield from self.feed.batches(list(idx.split(size)))
            return
        for part in idx.split(size):
            yield to_device(read_rows(x, part), self.device)

    @torch.no_grad()
    def validate(self, batches: Iterable[Tensor], train_mode: bool = False) -> dict[str, float]:
        """Loss in the network's scale, MSE and PSNR in the data's original scale, on batches of raw data."""
        context = runtime.batch_norm_frozen(self.model) if train_mode else runtime.eval_mode(self.model)
        total_loss = torch.zeros((), device=self.device)
        total_sq = torch.zeros((), device=self.device, dtype=torch.float64)
        # The same corruption every time, so validation losses compare across epochs.
        generator = torch.Generator(device=self.device).manual_seed(0)
        count = values = 0
        with context:
            for batch in batches:
                b = self.pipeline(batch, generator)  # the patches the loss and the MSE both see
                out = self.model(b.input).float()
                total_loss += self.objective.loss_fn(out, b.target) * len(b.raw)
                total_sq += ((self.p.normalizer.inverse(out) - b.raw) ** 2).sum(dtype=torch.float64)
                count, values = count + len(b.raw), values + b.raw.numel()
        if not count:
            return {}
        mse = float(total_sq) / values
        return {"loss": float(total_loss) / count, "mse": mse, "psnr": psnr(mse, self.p.data_high - self.p.data_low)}

    def _log(self, message: str) -> None:
        if self.config.quiet or not self.dist.main:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(message, file=sys.stderr)  # above the bar, as it comes
        else:
            print(message, file=sys.stderr, flush=True)

    def _warn(self, message: str) -> None:
        # --quiet silences progress, not what the user should act on.
        if self.dist.main:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model_config": self.p.model.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "normalizer": self.p.normalizer.to_dict(),
            "train_config": self.config.to_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "best_val": self.state.best_val,
            "bad_epochs": self.state.bad_epochs,
            "metrics": self.state.metrics,
        } | ({"head": self.head.state_dict()} if self.head is not None else {})

    def load_state(self, state: dict[str, Any], new_schedule: bool = False) -> None:
        """Continue from a checkpoint; ``new_schedule`` keeps the freshly planned learning-rate schedule."""
        if ("head" in state) != (self.head is not None):
            raise ConvaeError(
                "checkpoint does not match this run: a second network (contrastive head, segmenter) in one only"
            )
        where = self.run_dir / "last.pt"
        checkpoint.load_weights(self.model, state["model"], where)
        if self.head is not None:
            checkpoint.load_weights(self.head, state["head"], where)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if new_schedule:  # planned on the loaded optimizer, whose rate it then sets
                self.scheduler = make_schedule(self.config, self.optimizer, self.steps_per_epoch)
            else:
                self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as err:
            reason = str(err).splitlines()[0]
            raise ConvaeError(f"{where}: the optimizer state does not fit this run: {reason}") from None
        bad_epochs = 0 if new_schedule else state["bad_epochs"]  # patience counts afresh when extended
        self.state = _State(state["epoch"], state["step"], float(state["best_val"]), bad_epochs, list(state["metrics"]))

    @torch.no_grad()
    def finish(self) -> dict[str, Any]:
        """Final metrics with the best weights; hparams and the code projector (main process only)."""
        if not self.dist.main:
            return {}
        best = checkpoint.load(self.run_dir / "best.pt", map_location=self.device)
        self.model.load_state_dict(best["model"])
        final = {f"val_{k}": v for k, v in self.validate(self._chunks(self.monitored)).items()}
        x_test = self.p.dataset.x_test
        if x_test is not None:  # the source's own test split, all of it
            test = self.validate(self._chunks(torch.arange(len(x_test)), x_test))
        else:  # the split held out from the training file (none when test_fraction is 0), capped as validation is
            test = self.validate(self._chunks(capped(self.test_idx, self.config.val_samples)))
        final.update({f"test_{k}": v for k, v in test.items()})
        self.summaries.hparams(self.config.to_dict(), final)
        self.pictures.embedding(self.monitored[: self.config.embedding_samples])
        self.summaries.close()
        return final
