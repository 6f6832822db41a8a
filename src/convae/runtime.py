"""Where and how training steps run: device, memory layout, precision, compilation, DDP.

None of these change what a run computes beyond rounding; they decide its
speed. Each automatic choice is recorded in the run's config, so a resumed run
computes exactly as before.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from convae.errors import ConvaeError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConvaeError(f"unknown device '{name}' (e.g. auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConvaeError(f"device '{name}' asked for, but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConvaeError(f"device '{name}' asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def fits_on_device(nbytes: int, device: torch.device, share: float = 0.5) -> bool:
    """Whether a dataset of ``nbytes`` should live on ``device``: always for the CPU,
    on a GPU when it takes at most ``share`` of the free memory."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= share * free


# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA) below which it has no bf16 arithmetic.
_NO_BF16_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU, and oneDNN and ATen allowed to use them. PyTorch answers
    only through private helpers, which a release may rename: without them the answer is no
    (float32, never wrong, maybe slower). A process that caps the instruction set
    (``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``: how the benchmarks run an AVX2
    machine's kernels on a newer CPU) gets no: the capped kernels would emulate bf16, slowly."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _NO_BF16_ISAS:
        return False
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2"):
        return False
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(check() for check in checks if check is not None)
    except Exception:
        return False


def can_compile_for(device: torch.device) -> bool:
    """Whether inductor can generate kernels for a CUDA device: Triton installed, and a GPU
    it supports (compute capability 7.0 or newer), so that the automatic choice never fails."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.get_device_capability(device) >= (7, 0)


@dataclass(frozen=True)
class Speed:
    channels_last: bool
    amp: bool
    compile: bool | str


def speed_settings(
    channels_last: bool | None,
    amp: bool | None,
    compile_: bool | str | None,
    device: torch.device,
    world: int,
    images: bool,
    one_pixel_maps: bool = False,
) -> Speed:
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

    One exception to channels-last: on a CPU under bf16 autocast, a model whose
    encoder convolves maps of one pixel (``one_pixel_maps``) keeps the plain
    layout. There oneDNN's bf16 channels-last kernels now and then return NaN
    weight gradients for those convolutions, from one run to the next of the
    same seed (issue 34's NaN; benchmarks/RESULTS.md, "bf16 NaN").
    """
    cuda = device.type == "cuda"
    if amp is None:
        amp = torch.cuda.is_bf16_supported() if cuda else device.type == "cpu" and cpu_has_native_bf16()
    if channels_last is None:
        channels_last = not (amp and device.type == "cpu" and one_pixel_maps)
    layout = bool(channels_last) and images
    if compile_ is None:
        compile_ = "reduce-overhead" if cuda and world == 1 and can_compile_for(device) else False
    return Speed(layout, bool(amp), compile_)


def first_line(err: BaseException) -> str:
    """``Type: first line`` of an error; for Dynamo's wrapper, of the backend's own error."""
    inner = getattr(err, "inner_exception", None) or err
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    return f"{type(inner).__name__}: {lines[0]}" if lines else type(inner).__name__


def compiled_or_eager(
    net: nn.Module, mode: bool | str, automatic: bool, trial: Callable[[nn.Module], None], warn: Callable[[str], None]
) -> nn.Module | None:
    """``net`` compiled, once ``trial`` (a forward and backward pass) has built its kernels; None when
    the automatic choice failed and the step should run eagerly.

    torch.compile builds kernels at the first call, where a missing C compiler,
    a Triton that does not match the GPU or an operator inductor lacks fails.
    Trying one training batch before anything is written lets the automatic
    choice fall back to eager with a warning, and an explicit ``--compile`` stop
    with one line instead of a traceback mid-epoch. ``trial`` puts back what
    the pass changed (batch-norm statistics, gradients).
    """
    compiled = torch.compile(net, mode="default" if mode is True else mode)
    try:
        trial(compiled)
    except Exception as err:
        reason = f"torch.compile failed ({first_line(err)})"
        if not automatic:
            raise ConvaeError(f"{reason}; train with --compile false") from None
        warn(f"{reason}; training without it")
        return None
    return compiled


def wrap_ddp(net: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


class eval_mode:
    """Eval mode inside the block, the previous mode after it."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


class batch_norm_frozen:
    """Train mode inside the block, without moving the batch-norm running statistics."""

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


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
