"""Training: one linear loop, called by the CLI and by tests alike.

``train(config)`` loads the data, fits the preprocessing on the training split,
builds the model, and runs epochs; after each epoch it validates, writes
``metrics.json``, TensorBoard summaries and the ``last`` (and ``best``)
checkpoints, all atomically. ``train(resume=run_dir)`` continues a run from its
``last`` checkpoint. Every source of randomness is reseeded from (seed, epoch)
at the start of each epoch, so a run resumed at an epoch boundary follows the
same path as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convae import checkpoint, distributed, presets
from convae.data import Dataset, drop_classes, load, split_validation
from convae.errors import ConvaeError
from convae.model import AutoEncoder, ModelConfig, build, from_config
from convae.preprocess import Augment, Noise, Normalizer, jitter_brightness_contrast, resized_crops
from convae.summaries import Summaries

LOSSES = ("mse", "bce", "l1")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes
MONITOR_SAMPLES = 10_000  # the training images that stand in for a missing validation split


@dataclass
class TrainConfig:
    """Every setting of a run. Saved as ``config.json`` in the run directory."""

    # data
    data: str = "fashion-mnist"
    data_dir: str | None = None
    channels: int | None = None
    image_size: list[int] | None = None
    val_fraction: float = 0.1
    normalize: str = "unit"
    zca_epsilon: float = 1e-2
    noise: str | None = None
    augment: str | None = None  # flip, shift:N or flip+shift:N (training batches only)
    exclude_classes: list[int] | None = None  # labels left out of training (anomaly detection)
    # model
    arch: str | list = presets.DEFAULT_PRESET  # a preset name, an architecture string or a list of layers
    output: str | None = None  # None: follows normalize (sigmoid for unit, identity otherwise)
    tied: bool = False
    upsample: str = "transpose"
    # optimisation
    loss: str = "mse"
    # a contrastive term on the codes (SimCLR's NT-Xent) between two crops of each image, which are encoded
    # beside the image but not reconstructed: its weight (0: off), the smallest crop area of the two views,
    # the strength of their brightness and contrast jitter, the projection head's output size and the temperature
    contrastive: float = 0.0
    contrastive_crop: float = 0.3
    contrastive_jitter: float = 1.0
    contrastive_head: int = 64
    contrastive_tau: float = 0.5
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    epochs: int = 10
    batch_size: int = 128
    clip_grad: float | None = None
    patience: int | None = None
    seed: int = 0
    # runtime
    device: str = "auto"
    channels_last: bool | None = None  # None: on for 2-D data
    amp: bool | None = None  # bf16 autocast; None: on where bf16 is native (CUDA GPUs, AVX512-BF16/AMX CPUs)
    # torch.compile the training step: true or one of COMPILE_MODES; None: reduce-overhead on one CUDA device
    compile: bool | str | None = None
    sync_bn: bool = False  # with several processes: batch-norm statistics over the global batch
    threads: int | None = None
    out: str | None = None
    quiet: bool = False
    image_every: int = 0  # epochs between image grids; 0: about four times per run
    histograms: bool = True
    embedding_samples: int = 500

    def validate(self) -> None:
        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                raise ConvaeError(f"{name} must be one of {', '.join(options)}, not {getattr(self, name)!r}")

        choice("loss", LOSSES)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConvaeError(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ConvaeError(f"lr must be positive, not {self.lr}")
        if self.weight_decay < 0:
            raise ConvaeError(f"weight_decay must be >= 0, not {self.weight_decay}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ConvaeError(f"clip_grad must be positive, not {self.clip_grad}")
        if self.contrastive < 0:
            raise ConvaeError(f"contrastive must be >= 0 (0: off), not {self.contrastive}")
        if not 0 < self.contrastive_crop <= 1:
            raise ConvaeError(f"contrastive_crop must be in (0, 1], not {self.contrastive_crop}")
        if not 0 <= self.contrastive_jitter <= 1:
            raise ConvaeError(f"contrastive_jitter must be in [0, 1], not {self.contrastive_jitter}")
        if not isinstance(self.contrastive_head, int) or self.contrastive_head < 1:
            raise ConvaeError(f"contrastive_head must be a positive integer, not {self.contrastive_head!r}")
        if not self.contrastive_tau > 0:
            raise ConvaeError(f"contrastive_tau must be positive, not {self.contrastive_tau}")
        if self.patience is not None and self.patience < 1:
            raise ConvaeError(f"patience must be a positive integer, not {self.patience}")
        if self.loss == "bce" and self.normalize != "unit":
            raise ConvaeError("loss bce needs data in [0, 1]: use it with normalize unit")
        if not 0 <= self.val_fraction < 1:
            raise ConvaeError(f"val_fraction must be in [0, 1), not {self.val_fraction}")
        if isinstance(self.compile, str) and self.compile not in COMPILE_MODES:
            raise ConvaeError(f"compile must be true, false or one of {', '.join(COMPILE_MODES)}, not {self.compile!r}")
        Noise.parse(self.noise)
        Augment.parse(self.augment)
        Normalizer(self.normalize)


def resolve_config(settings: dict[str, Any]) -> TrainConfig:
    """Defaults, then the preset's recipe, then the user's ``settings`` (file and flags)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {k.replace("-", "_"): v for k, v in settings.items()}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConvaeError(f"unknown setting(s): {', '.join(unknown)} (settings: {', '.join(sorted(known))})")
    settings = {key: _check_type(key, value) for key, value in settings.items()}
    arch = settings.get("arch", TrainConfig.arch)
    recipe = presets.get(arch).train if presets.is_preset(arch) else {}
    try:
        config = TrainConfig(**{**recipe, **settings})
    except TypeError as err:
        raise ConvaeError(f"bad settings: {err}") from None
    config.validate()
    return config


def _check_type(key: str, value: Any) -> Any:
    """A setting from a file or the command line, checked against its field's type."""
    import typing

    hint = typing.get_type_hints(TrainConfig)[key]
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return value
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is type(None):
            continue
        if isinstance(value, origin) and not (origin is int and isinstance(value, bool)):
            return value
    names = " or ".join(getattr(typing.get_origin(k) or k, "__name__", str(k)) for k in allowed)
    raise ConvaeError(f"setting {key}: expected {names.replace('NoneType', 'nothing')}, got {value!r}")


def arch_of(config: TrainConfig) -> str | list:
    """The architecture string of a config (a preset name resolved)."""
    return presets.resolve(config.arch)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConvaeError(f"unknown device '{name}' (e.g. auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConvaeError(f"device '{name}' asked for, but CUDA is not available")
    return device


def fits_on_device(nbytes: int, device: torch.device, share: float = 0.5) -> bool:
    """Whether a dataset of ``nbytes`` should live on ``device``: always for the CPU,
    on a GPU when it takes at most ``share`` of the free memory."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


def psnr(mse: float, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error, for data spanning ``data_range``."""
    return 10 * math.log10(data_range**2 / mse) if mse > 0 else math.inf


def _can_compile_for(device: torch.device) -> bool:
    """Whether inductor can generate kernels for a CUDA device: Triton installed, and a GPU
    it supports (compute capability 7.0 or newer), so that the automatic choice never fails."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton() and torch.cuda.get_device_capability(device) >= (7, 0)


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


def _first_line(err: BaseException) -> str:
    """``Type: first line`` of an error; for Dynamo's wrapper, of the backend's own error."""
    inner = getattr(err, "inner_exception", None) or err
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return f"{type(inner).__name__}: {lines[0]}" if lines else type(inner).__name__


def epoch_seeds(seed: int, epoch: int, rank: int = 0) -> tuple[int, int]:
    """(shuffle seed, per-process seed) of an epoch.

    Every process must draw the same permutation (each takes its slice of the
    global batch), but dropout, input noise and augmentation should differ
    between processes, else each rank repeats the same masks on other samples.
    Rank 0 keeps the single-process seed, so one process computes as before.
    """
    shuffle = seed * 100_003 + epoch
    return shuffle, shuffle + 1_000_003 * rank


def _loss_fn(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    return {"mse": F.mse_loss, "l1": F.l1_loss, "bce": F.binary_cross_entropy}[name]


def nt_xent(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """SimCLR's contrastive loss (Chen et al., 2020): row i of ``a`` and of ``b`` are two views of one sample.

    Each view's positive is the other view of its sample, its negatives the
    other 2N - 2 views of the batch; cross-entropy over cosine similarities / tau.
    """
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = len(a)
    sim = (z @ z.T / tau).fill_diagonal_(float("-inf"))  # a view is not its own positive
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, positives)


def contrastive_term(projected: Tensor, tau: float, total: int, info: distributed.Dist) -> Tensor:
    """NT-Xent of a step's projected views (this process's first views, then its second, of its
    shard of a global batch of ``total`` samples); each view's negatives are the views of the
    whole global batch, gathered from every process, as in one process."""
    pairs = distributed.gather_rows(torch.stack(projected.chunk(2), 1), total, info)
    return nt_xent(*pairs.unbind(1), tau)


class _WithProjection(nn.Module):
    """The autoencoder and the projection head of a contrastive term: one module, so DDP
    and torch.compile see the whole step. Takes a batch of the images, then their first
    views, then their second views (`Trainer._prepare_batch`); returns the images'
    reconstructions and the views' projected codes."""

    def __init__(self, model: AutoEncoder, head: nn.Module):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        images = len(x) // 3
        out, z = self.model.forward_with_code(x, decoded=images)
        with torch.autocast(x.device.type, enabled=False):  # the head and the term in float32, as the loss
            return out, self.head(z[images:].float().flatten(1))


def projection_head(code_size: int, outputs: int) -> nn.Module:
    """SimCLR's MLP on the codes (code -> 256 -> outputs): the term shapes the codes through it,
    so they keep what the head discards. Trained and checkpointed with the run, not exported."""
    return nn.Sequential(nn.Linear(code_size, 256), nn.ReLU(), nn.Linear(256, outputs))


@dataclass
class Prepared:
    """What a run needs besides its config: data splits, preprocessing and the model."""

    dataset: Dataset
    train_idx: np.ndarray
    val_idx: np.ndarray
    normalizer: Normalizer
    model: AutoEncoder
    data_low: float
    data_high: float


def prepare(config: TrainConfig, normalizer_state: dict | None = None) -> Prepared:
    """Load data, split, fit preprocessing on the training split, build the model. Writes nothing."""
    dataset = load(config.data, data_dir=config.data_dir, channels=config.channels, image_size=config.image_size)
    dataset = drop_classes(dataset, config.exclude_classes)
    n = len(dataset.x_train)
    if n < 2:
        raise ConvaeError(f"dataset '{config.data}' has {n} sample(s); at least 2 are needed to train")
    train_idx, val_idx = split_validation(n, config.val_fraction, config.seed)
    x_fit = dataset.x_train[train_idx]
    if normalizer_state is not None:
        normalizer = Normalizer.from_dict(normalizer_state)
    else:
        normalizer = Normalizer(config.normalize, config.zca_epsilon).fit(x_fit)
    output = config.output or normalizer.output_activation
    torch.manual_seed(config.seed)  # the initial weights
    model = build(arch_of(config), dataset.sample_shape, output=output, tied=config.tied, upsample=config.upsample)
    return Prepared(dataset, train_idx, val_idx, normalizer, model, float(x_fit.min()), float(x_fit.max()))


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    step: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0
    metrics: list[dict[str, float]] = field(default_factory=list)


class _BatchNormFrozen:
    """Run the model in train mode without moving the batch-norm running statistics."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.saved = {k: v.clone() for k, v in self.model.named_buffers()}
        self.was_training = self.model.training
        self.model.train()

    def __exit__(self, *exc: object) -> None:
        buffers = dict(self.model.named_buffers())
        with torch.no_grad():
            for k, v in self.saved.items():
                buffers[k].copy_(v)
        self.model.train(self.was_training)


def _make_optimizer(config: TrainConfig, params: list[nn.Parameter], total_steps: int, device: torch.device):
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
    optimizer = cls(params, **kwargs)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    elif config.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=max(total_steps, 1))
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return optimizer, scheduler


def _new_run_dir(config: TrainConfig) -> Path:
    if config.out:
        out = Path(config.out)
    else:
        stem = presets.get(config.arch).name if presets.is_preset(config.arch) else "custom"
        out = Path("runs") / f"{config.data.split(':')[0]}-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConvaeError(
            f"{out} already exists and is not empty; pass --resume {out} to continue it, or another --out"
        )
    return out


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
        # The whole training set lives on the device as float32 when it fits comfortably;
        # else in pinned host memory. Batches are gathered by index either way.
        self.data_device = device if fits_on_device(sample.nbytes, device) else torch.device("cpu")
        self.x = torch.as_tensor(sample).to(self.data_device)
        if self.data_device != device and device.type == "cuda":
            self.x = self.x.pin_memory()
        self.train_idx = torch.as_tensor(prepared.train_idx, device=self.data_device)
        self.val_idx = torch.as_tensor(prepared.val_idx, device=self.data_device)
        self.noise = Noise.parse(config.noise)
        self.augment = Augment.parse(config.augment)
        self.loss_fn = _loss_fn(config.loss)
        self.head: nn.Module | None = None
        if config.contrastive:
            if sample.ndim != 4:
                raise ConvaeError("contrastive compares crops of 2-D images; this data is not (N, C, H, W)")
            self.head = projection_head(math.prod(self.model.code_shape), config.contrastive_head).to(device)
        n = len(self.train_idx)
        # batch_size is the global batch; each of the world's processes takes an
        # equal slice, so the number of steps does not depend on the process count.
        world = self.dist.world
        self.batch = min(config.batch_size, n)
        if self.batch % world:
            raise ConvaeError(f"batch size {self.batch} does not split evenly over {world} processes")
        automatic_compile = config.compile is None
        self.channels_last, self.amp, self.compile = self._speed_settings(sample.ndim == 4)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.sync_bn and world > 1:
            if device.type != "cuda":
                raise ConvaeError(
                    "--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm); on CPU batch norm is per process"
                )
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        # What the optimizer steps (after the layout and SyncBatchNorm conversions, which keep parameters).
        self.params = [*self.model.parameters(), *(self.head.parameters() if self.head is not None else [])]
        # `net` is what the training step calls: with the projection head of a contrastive
        # term, DDP-wrapped with several processes, compiled on request. Evaluation and
        # checkpoints use the plain `model` (and `head`).
        self.net: nn.Module = self.model if self.head is None else _WithProjection(self.model, self.head)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.net, device_ids=[device.index] if device.type == "cuda" else None)
        if self.compile:
            self.net = self._compiled_or_eager(self.net, automatic_compile)
        # Recorded in the config, so a resumed run computes exactly as before.
        config.channels_last, config.amp, config.compile = self.channels_last, self.amp, self.compile
        # Drop a last batch smaller than 2 samples per process (batch norm cannot train on one),
        # and any smaller last batch when compiling: a second shape would compile and capture again.
        partial = n % self.batch >= 2 * world and not self.compile
        self.steps_per_epoch = n // self.batch + (1 if partial else 0)
        self.optimizer, self.scheduler = _make_optimizer(
            config, self.params, config.epochs * self.steps_per_epoch, device
        )
        self.state = _State()
        self.summaries: Summaries | None = None

    # -- helpers -----------------------------------------------------------------------------
    def _speed_settings(self, images: bool) -> tuple[bool, bool, bool | str]:
        """Channels-last, bf16 autocast and compilation: the user's choice, else what is fastest here.

        Channels-last is on for images: oneDNN and cuDNN convolve in that layout
        without reordering. bf16 autocast is on where the hardware computes in
        bf16 natively: CUDA GPUs that support it, and CPUs with AVX512-BF16 or
        AMX (faster there on the benchmark's models: benchmarks/RESULTS.md).
        Weights, batch norm and the loss stay float32. On one CUDA device that
        Triton supports the step is compiled with CUDA graphs (``reduce-overhead``):
        small models are bound by kernel launches there, and the graphs replay a
        step in one (1.3-2.3x on an H200 at batch 128: RESULTS.md). Not on CPUs
        (slower there) nor under DDP (not measured with it).
        """
        config, cuda = self.config, self.device.type == "cuda"
        channels_last = images if config.channels_last is None else bool(config.channels_last) and images
        if config.amp is not None:
            amp = bool(config.amp)
        elif cuda:
            amp = torch.cuda.is_bf16_supported()
        elif self.device.type == "cpu":
            amp = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        else:
            amp = False
        if config.compile is not None:
            compile_ = config.compile
        else:
            compile_ = "reduce-overhead" if cuda and self.dist.world == 1 and _can_compile_for(self.device) else False
        return channels_last, amp, compile_

    def _compiled_or_eager(self, net: nn.Module, automatic: bool) -> nn.Module:
        """``net`` compiled, once a forward and backward pass has built its kernels; else ``net``.

        torch.compile builds kernels at the first call, where a missing C compiler,
        a Triton that does not match the GPU or an operator inductor lacks fails.
        Trying one training batch here, before anything is written, lets the
        automatic choice fall back to eager with a warning, and an explicit
        ``--compile`` stop with one line instead of a traceback mid-epoch. The
        pass's batch-norm statistics and gradients are put back.
        """
        compiled = torch.compile(net, mode="default" if self.compile is True else self.compile)
        saved = {name: b.clone() for name, b in self.model.named_buffers()}
        # a training step's batch: with a contrastive term, two views of each sample
        noisy, clean = self._prepare_batch(self._rows(self._shard(self.train_idx[: self.batch])), None, augment=True)
        was_training = self.model.training
        self.model.train()
        try:
            self._loss(compiled, noisy, clean, self.batch)[0].backward()
        except Exception as err:
            reason = f"torch.compile failed ({_first_line(err)})"
            if not automatic:
                raise ConvaeError(f"{reason}; train with --compile false") from None
            self._warn(f"{reason}; training without it")
            self.compile = False
            return net
        finally:
            with torch.no_grad():
                for name, b in self.model.named_buffers():
                    b.copy_(saved[name])
            for p in self.params:
                p.grad = None
            self.model.train(was_training)
        return compiled

    def _loss(self, net: nn.Module, noisy: Tensor, clean: Tensor, total: int) -> tuple[Tensor, Tensor | None]:
        """A training step's loss and its contrastive term (None without one) on this process's
        shard of a global batch of ``total`` samples: the forward pass under bf16 autocast when
        on, the losses in float32."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = net(noisy)
        if self.head is None:
            return self.loss_fn(out.float(), clean), None
        out, projected = out
        term = contrastive_term(projected, self.config.contrastive_tau, total, self.dist)
        return self.loss_fn(out.float(), clean) + self.config.contrastive * term, term

    def _prepare_batch(
        self, raw: Tensor, generator: torch.Generator | None, augment: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(network input, target) of a raw batch; ``augment`` only for training steps, where a
        contrastive term adds two crops of each sample's input after the inputs (the first
        views, then the second): the term compares their codes, the target stays the images."""
        norm = self.p.normalizer
        if augment and self.augment is not None:
            raw = self.augment.apply(raw, self.p.data_low, generator)
        seen = raw if self.noise is None else self.noise.apply(raw, self.p.data_low, self.p.data_high, generator)
        if augment and self.head is not None:
            # Reconstructing the crops instead would train the decoder on zoomed-in images the model never
            # meets after training: worse test MSE and a worse probe (benchmarks/RESULTS.md).
            crop = self.config.contrastive_crop
            views = torch.cat([resized_crops(seen, crop, generator), resized_crops(seen, crop, generator)])
            if self.config.contrastive_jitter:
                low, high, strength = self.p.data_low, self.p.data_high, self.config.contrastive_jitter
                views = jitter_brightness_contrast(views, strength, low, high, generator)
            seen = torch.cat([seen, views])
        clean = norm.transform(raw)
        noisy = clean if seen is raw else norm.transform(seen)
        if self.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        return noisy, clean

    def _state_dict(self) -> dict[str, Any]:
        return {
            "model_config": self.p.model.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "normalizer": self.p.normalizer.to_dict(),
            "train_config": dataclasses.asdict(self.config),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "best_val": self.state.best_val,
            "bad_epochs": self.state.bad_epochs,
            "metrics": self.state.metrics,
        } | ({"head": self.head.state_dict()} if self.head is not None else {})

    def load_state(self, state: dict[str, Any]) -> None:
        if ("head" in state) != (self.head is not None):
            raise ConvaeError("checkpoint does not match this run: a contrastive head in one and not the other")
        try:
            self.model.load_state_dict(state["model"])
            if self.head is not None:
                self.head.load_state_dict(state["head"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ConvaeError(f"checkpoint does not match this run's model: {str(err).splitlines()[0]}") from None
        self.state = _State(
            state["epoch"], state["step"], float(state["best_val"]), state["bad_epochs"], list(state["metrics"])
        )

    @torch.no_grad()
    def evaluate(self, raw: Tensor, train_mode: bool = False) -> dict[str, float]:
        """Loss in the network's scale, MSE and PSNR in the data's original scale, on raw data."""
        if len(raw) == 0:
            return {}
        context = _BatchNormFrozen(self.model) if train_mode else _Eval(self.model)
        total_loss = torch.zeros((), device=self.device)
        total_sq = torch.zeros((), device=self.device, dtype=torch.float64)
        # The same corruption every time, so validation losses compare across epochs.
        generator = torch.Generator(device=self.device).manual_seed(0)
        with context:
            for batch in raw.split(1024):
                batch = batch.to(self.device, non_blocking=True)
                noisy, clean = self._prepare_batch(batch, generator)
                out = self.model(noisy).float()
                total_loss += self.loss_fn(out, clean) * len(batch)
                total_sq += ((self.p.normalizer.inverse(out) - batch) ** 2).sum(dtype=torch.float64)
        mse = float(total_sq) / raw.numel()
        return {"loss": float(total_loss) / len(raw), "mse": mse, "psnr": psnr(mse, self.p.data_high - self.p.data_low)}

    def _val_idx(self) -> Tensor:
        # Without a validation split (val_fraction 0) the training data stands in: every
        # k-th image, at most MONITOR_SAMPLES, since a forward pass over all of Fashion-MNIST's
        # 60,000 each epoch costs a third of the epoch's training (on a CPU, a third longer runs).
        if len(self.val_idx):
            return self.val_idx
        return self.train_idx[:: math.ceil(len(self.train_idx) / MONITOR_SAMPLES)]

    def _log(self, message: str) -> None:
        if not self.config.quiet and self.dist.main:
            print(message, file=sys.stderr, flush=True)

    def _warn(self, message: str) -> None:
        # --quiet silences progress, not what the user should act on.
        if self.dist.main:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, on_step: Callable[[int], None] | None = None) -> None:
        config, model = self.config, self.model
        self.summaries = Summaries(str(self.run_dir), enabled=self.dist.main)
        if self.state.epoch == 0 and self.dist.main:
            self._first_summaries()
        show_bar = not config.quiet and sys.stderr.isatty() and self.dist.main
        from tqdm import tqdm

        total = config.epochs * self.steps_per_epoch
        bar = tqdm(total=total, initial=self.state.step, disable=not show_bar, unit="step")
        try:
            while self.state.epoch < config.epochs:
                if config.patience is not None and self.state.bad_epochs >= config.patience:
                    self._log(f"early stopping: no validation improvement in {config.patience} epochs")
                    break
                epoch = self.state.epoch
                seed, local = epoch_seeds(config.seed, epoch, self.dist.rank)
                torch.manual_seed(local)  # dropout and anything else drawing from the global RNG
                shuffle = torch.Generator(device=self.data_device).manual_seed(seed)
                generator = torch.Generator(device=self.device).manual_seed(local)  # noise, augmentation
                perm = torch.randperm(len(self.train_idx), generator=shuffle, device=self.data_device)
                order = self.train_idx[perm]
                model.train()
                running = torch.zeros((), device=self.device)
                running_term = torch.zeros((), device=self.device)
                first_bad = torch.full((), -1, device=self.device, dtype=torch.long)
                started = time.perf_counter()
                seen = 0
                for i in range(self.steps_per_epoch):
                    batch = order[i * self.batch : (i + 1) * self.batch]
                    noisy, clean = self._prepare_batch(self._rows(self._shard(batch)), generator, augment=True)
                    loss, term = self._loss(self.net, noisy, clean, len(batch))
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
                    if show_bar and (i % 20 == 19 or i == self.steps_per_epoch - 1):
                        if self.dist.world == 1:  # with several processes, only the epoch end checks (together)
                            self._check_finite(first_bad, epoch)
                        rate = seen / max(time.perf_counter() - started, 1e-9)
                        bar.set_postfix(epoch=epoch + 1, loss=f"{float(running) / (i + 1):.4f}", img_s=f"{rate:.0f}")
                        bar.update(step - bar.n)
                self._check_finite(first_bad, epoch)
                elapsed = time.perf_counter() - started
                self.state.step += self.steps_per_epoch
                self.state.epoch += 1
                train_loss = float(distributed.all_mean(running, self.dist)) / self.steps_per_epoch
                term = None
                if self.head is not None:
                    term = float(distributed.all_mean(running_term, self.dist)) / self.steps_per_epoch
                self._end_epoch(train_loss, seen / elapsed, elapsed, term)
        finally:
            bar.close()

    def _rows(self, idx: Tensor) -> Tensor:
        """Samples by index, on the training device."""
        return self.x[idx].to(self.device, non_blocking=True)

    def _shard(self, batch: Tensor) -> Tensor:
        """This process's slice of a global batch (all of it in a single process)."""
        start, stop = distributed.shard_bounds(len(batch), self.dist)
        return batch[start:stop]

    def _check_finite(self, first_bad: Tensor, epoch: int) -> None:
        # Every process learns of a bad step on any process, so all stop together.
        bad = int(distributed.all_max(first_bad, self.dist))
        if bad >= 0:
            last = self.run_dir / "last.pt"
            kept = f"; the last good checkpoint is {last}" if last.exists() else ""
            raise ConvaeError(
                f"loss became non-finite at step {bad} (epoch {epoch + 1}); stopped{kept}. "
                "Try a lower --lr or --clip-grad"
            )

    def _first_summaries(self) -> None:
        example = self._rows(self._val_idx()[:2])
        noisy, _ = self._prepare_batch(example, None)
        with _Eval(self.model):
            self.summaries.graph(self.model, noisy)

    def _end_epoch(self, train_loss: float, images_per_s: float, seconds: float, term: float | None) -> None:
        config, state = self.config, self.state
        epoch = state.epoch
        val_idx = self._val_idx()
        val = self.evaluate(self.x[val_idx])
        val_train_mode = self.evaluate(self.x[val_idx[:2048]], train_mode=True)
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
        } | ({"train_contrastive": term} if term is not None else {})
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
        self.summaries.scalars(
            {
                "loss/train": train_loss,
                "loss/val": val["loss"],
                "loss/val_train_mode": val_train_mode["loss"],
                "val/mse": val["mse"],
                "val/psnr": val["psnr"],
                "lr": row["lr"],
                "images_per_s": images_per_s,
            }
            | ({"loss/train_contrastive": term} if term is not None else {}),
            state.step,
        )
        every = config.image_every or max(1, config.epochs // 4)
        if epoch == 1 or epoch % every == 0 or epoch == config.epochs:
            self._image_summaries(val_idx)
        if config.histograms:
            self.summaries.histograms(self.model, self._activations(val_idx[:256]), state.step)
        checkpoint.write_json(self.run_dir / "metrics.json", state.metrics)
        ckpt = self._state_dict()
        checkpoint.save(self.run_dir / "last.pt", ckpt)
        if improved:
            checkpoint.save(self.run_dir / "best.pt", ckpt)
        if config.quiet or sys.stderr.isatty():
            return
        self._log(
            f"epoch {epoch}/{config.epochs}  train {train_loss:.5f}  val {val['loss']:.5f}  "
            f"psnr {val['psnr']:.2f} dB  {images_per_s:.0f} img/s"
        )

    @torch.no_grad()
    def _image_summaries(self, idx: Tensor) -> None:
        raw = self._rows(idx[:16])
        noisy, _ = self._prepare_batch(raw, torch.Generator(device=self.device).manual_seed(0))
        with _Eval(self.model):
            out = self.model(noisy)
        norm = self.p.normalizer
        grids = {"images/input": self._display(raw), "images/reconstruction": self._display(norm.inverse(out.float()))}
        if self.noise is not None:
            grids["images/noisy_input"] = self._display(norm.inverse(noisy.float()))
        self.summaries.image_grids(grids, self.state.step)

    def _display(self, x: Tensor) -> Tensor:
        return ((x - self.p.data_low) / max(self.p.data_high - self.p.data_low, 1e-12)).clamp(0, 1)

    @torch.no_grad()
    def _activations(self, idx: Tensor) -> dict[str, Tensor]:
        noisy, _ = self._prepare_batch(self._rows(idx), None)
        out: dict[str, Tensor] = {}
        with _Eval(self.model):
            h = noisy
            for i, block in enumerate(self.model.encoder):
                h, _ = block(h)
                out[f"encoder/{i + 1}"] = h
        return out

    @torch.no_grad()
    def finish(self) -> dict[str, Any]:
        """Final metrics with the best weights; hparams and the code projector (main process only)."""
        if not self.dist.main:
            return {}
        best = checkpoint.load(self.run_dir / "best.pt", map_location=self.device)
        self.model.load_state_dict(best["model"])
        val_idx = self._val_idx()
        final = {f"val_{k}": v for k, v in self.evaluate(self.x[val_idx]).items()}
        dataset = self.p.dataset
        if dataset.x_test is not None:
            test = self.evaluate(torch.as_tensor(dataset.x_test))  # moved to the device batch by batch
            final.update({f"test_{k}": v for k, v in test.items()})
        self.summaries.hparams(dataclasses.asdict(self.config), final)
        sample = val_idx[: self.config.embedding_samples]
        if len(sample):
            raw = self._rows(sample)
            noisy, _ = self._prepare_batch(raw, None)
            with _Eval(self.model):
                codes = self.model.encode(noisy)
            labels = None
            if dataset.y_train is not None:
                ys = dataset.y_train[sample.cpu().numpy()]
                labels = [dataset.classes[y] if dataset.classes else str(y) for y in ys]
            self.summaries.embedding(codes, labels, self._display(raw), self.state.step)
        self.summaries.close()
        return final


class _Eval:
    """Eval mode inside the block, the previous mode after it."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train a run (or resume one); returns ``{"run_dir", "epochs", "metrics", "final"}``.

    Nothing is written until the data loads and the model builds; a run that
    fails before its first checkpoint leaves no run directory behind.
    """
    if resume is not None:
        run_dir = Path(resume)
        state = checkpoint.load(run_dir / "last.pt")
        config = TrainConfig(**state["train_config"])
        if config.epochs <= state["epoch"]:
            raise ConvaeError(f"{run_dir} already finished its {config.epochs} epochs")
        prepared = prepare(config, normalizer_state=state["normalizer"])
        if ModelConfig(**state["model_config"]).to_dict() != prepared.model.config.to_dict():
            raise ConvaeError(f"{run_dir}: the checkpoint's model does not match its config")
    else:
        if config is None:
            config = TrainConfig()
        config.validate()
        prepared = prepare(config)
        run_dir = _new_run_dir(config)
        state = None
    if config.threads:
        torch.set_num_threads(config.threads)
    dist, device = distributed.setup(pick_device(config.device))
    created = not run_dir.exists()
    trainer = Trainer(config, run_dir, prepared, device, dist)
    if state is not None:
        trainer.load_state(state)
    try:
        if dist.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.write_json(run_dir / "config.json", dataclasses.asdict(config))
            checkpoint.atomic_write(run_dir / "preprocess.pt", lambda f: torch.save(prepared.normalizer.to_dict(), f))
        trainer.fit(on_step)
        final = trainer.finish()
        if dist.main:
            checkpoint.write_json(run_dir / "final.json", final)
        distributed.barrier(dist)
    except BaseException:
        if trainer.summaries:
            trainer.summaries.close()
        if dist.main and created and not (run_dir / "last.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        distributed.cleanup()
    return {"run_dir": str(run_dir), "epochs": trainer.state.epoch, "metrics": trainer.state.metrics, "final": final}


def load_run(run_dir: str | Path, which: str = "best", device: str = "cpu"):
    """A trained model (eval mode) with its normalizer and config, from a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConvaeError(f"{run_dir}: no such run directory")
    path = run_dir / f"{which}.pt"
    if not path.exists():
        raise ConvaeError(f"{run_dir}: no {which}.pt checkpoint (has it finished an epoch?)")
    state = checkpoint.load(path, map_location=device)
    model = from_config(state["model_config"])
    model.load_state_dict(state["model"])
    model.eval()
    return model, Normalizer.from_dict(state["normalizer"]), TrainConfig(**state["train_config"])


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML (or JSON) file; keys are TrainConfig fields."""
    path = Path(path)
    if not path.is_file():
        raise ConvaeError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except ValueError as err:
        raise ConvaeError(f"{path}: cannot parse ({err})") from None
    if not isinstance(data, dict):
        raise ConvaeError(f"{path}: expected a table of settings")
    data = data.get("train", data)
    return data
