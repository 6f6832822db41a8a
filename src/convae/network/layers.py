"""Layers, looked up by (kind, spatial dims), and the down/up pairs the model mirrors.

``LAYERS[kind, dims]`` gives the PyTorch class for 1-, 2- or 3-D data (dims 0
means flat features, after a dense layer), so no code below branches on the
number of dimensions. Every *down* module maps ``x -> (y, switches)`` and its
*up* partner maps ``(y, size, switches) -> x`` where ``size`` is the per-sample
shape the down module saw: the up module produces exactly that shape from the
layer arithmetic (transposed-convolution output padding, unpooling output
size), never by cropping a guessed result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convae.errors import ConvaeError
from convae.network.spec import Act, Conv, Dense, Dropout, LayerSpec, Norm, Pool, Res


class Factory:
    """A table from (kind, dims) to a constructor, with a helpful KeyError."""

    def __init__(self, name: str, table: dict[tuple[str, int], Callable]):
        self.name = name
        self.table = table

    def __getitem__(self, key: tuple[str, int]) -> Callable:
        try:
            return self.table[key]
        except KeyError:
            raise KeyError(f"{self.name} has no entry for kind {key[0]!r} with {key[1]} spatial dims") from None


LAYERS = Factory(
    "LAYERS",
    {
        **{("conv", d): c for d, c in ((1, nn.Conv1d), (2, nn.Conv2d), (3, nn.Conv3d))},
        **{
            ("bn", d): c
            for d, c in ((0, nn.BatchNorm1d), (1, nn.BatchNorm1d), (2, nn.BatchNorm2d), (3, nn.BatchNorm3d))
        },
    },
)
FUNCTIONS = Factory(
    "FUNCTIONS",
    {
        **{
            ("conv_transpose", d): f
            for d, f in ((1, F.conv_transpose1d), (2, F.conv_transpose2d), (3, F.conv_transpose3d))
        },
        **{("conv", d): f for d, f in ((1, F.conv1d), (2, F.conv2d), (3, F.conv3d))},
        **{("max_pool", d): f for d, f in ((1, F.max_pool1d), (2, F.max_pool2d), (3, F.max_pool3d))},
        **{("avg_pool", d): f for d, f in ((1, F.avg_pool1d), (2, F.avg_pool2d), (3, F.avg_pool3d))},
        **{("max_unpool", d): f for d, f in ((1, F.max_unpool1d), (2, F.max_unpool2d), (3, F.max_unpool3d))},
    },
)
ACTIVATIONS: dict[str, Callable[[Act], nn.Module]] = {
    "relu": lambda a: nn.ReLU(),
    "leakyrelu": lambda a: nn.LeakyReLU(a.slope),
    "gelu": lambda a: nn.GELU(),
    "silu": lambda a: nn.SiLU(),
    "tanh": lambda a: nn.Tanh(),
    "sigmoid": lambda a: nn.Sigmoid(),
    "identity": lambda a: nn.Identity(),
}


def post_layer(layer: LayerSpec, shape: Sequence[int]) -> nn.Module:
    """A norm, activation or dropout module for data of per-sample ``shape``."""
    if isinstance(layer, Norm):
        return LAYERS["bn", len(shape) - 1](shape[0])
    if isinstance(layer, Act):
        return ACTIVATIONS[layer.name](layer)
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.p)
    raise TypeError(f"not a post layer: {layer!r}")


class Join(nn.Module):
    """Where a skip connection meets the decoder: ``cat`` concatenates the decoder's features with the
    encoder's and merges them back to ``channels`` with a 1x1 convolution; ``add`` sums them."""

    def __init__(self, mode: str, channels: int, dims: int):
        super().__init__()
        self.mode = mode
        self.merge = LAYERS["conv", dims](2 * channels, channels, 1) if mode == "cat" else None

    def forward(self, z: Tensor, skip: Tensor) -> Tensor:
        if self.merge is None:
            return z + skip
        return self.merge(torch.cat([z, skip], dim=1))


def _pad_pairs(pads: Sequence[tuple[int, int]]) -> list[int]:
    # F.pad wants (last axis before, last axis after, previous axis ...).
    return [p for before_after in reversed(pads) for p in before_after]


class ConvDown(nn.Module):
    """Convolution with the spec's padding (asymmetric for even kernels with 'same')."""

    def __init__(self, spec: Conv, in_channels: int, dims: int):
        super().__init__()
        self.spec, self.dims = spec, dims
        before, after = spec.pads
        self.pads = [(before, after)] * dims
        self.conv = LAYERS["conv", dims](
            in_channels, spec.channels, spec.kernel, stride=spec.stride, padding=min(before, after), bias=spec.bias
        )
        # Only the part of the padding beyond the symmetric amount needs F.pad.
        self.extra = [(before - min(before, after), after - min(before, after))] * dims

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if any(b or a for b, a in self.extra):
            x = F.pad(x, _pad_pairs(self.extra))
        return self.conv(x), None


class ConvUp(nn.Module):
    """Transposed convolution: the adjoint of a ``ConvDown``, restoring its input size.

    With ``tied`` the weight is the encoder's own (shape ``(C_out, C_in, *K)``
    is already what a transposed convolution from C_out to C_in expects), so
    without bias this is exactly the adjoint linear map of the encoder's conv.
    """

    def __init__(self, down: ConvDown, tied: bool):
        super().__init__()
        spec, dims = down.spec, down.dims
        self.dims, self.stride, self.kernel = dims, spec.stride, spec.kernel
        self.pads = down.pads
        self.source = [down.conv] if tied else None  # a list: not registered twice as a submodule
        in_channels = down.conv.in_channels
        if tied:
            self.weight = None
        else:
            self.weight = nn.Parameter(torch.empty_like(down.conv.weight))
            nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.bias = nn.Parameter(torch.zeros(in_channels)) if spec.bias else None

    def forward(self, y: Tensor, size: Sequence[int], switches: Tensor | None = None) -> Tensor:
        weight = self.source[0].weight if self.source else self.weight
        # Full transposed output covers the padded input [-before, n + after);
        # the symmetric part of the padding is removed by the op's own
        # `padding`, the output padding adds the rows that the forward
        # convolution's floor division dropped, and an extra leading pad
        # (even kernel, 'same') is the one row the adjoint of F.pad removes.
        output_padding, lead = [], []
        exporting = torch.compiler.is_exporting()
        for m, n, (before, after) in zip(y.shape[2:], size[1:], self.pads):
            p = min(before, after)
            lead.append(before - p)
            if exporting:
                # An exported graph needs a fixed output padding: take the largest
                # and keep the first n positions below. The values are the same;
                # only positions past n are computed and dropped.
                output_padding.append(self.stride - 1)
            else:
                output_padding.append(n + (before - p) - ((m - 1) * self.stride + self.kernel - 2 * p))
        x = FUNCTIONS["conv_transpose", self.dims](
            y,
            weight,
            self.bias,
            stride=self.stride,
            padding=min(self.pads[0]),
            output_padding=tuple(output_padding),
        )
        for axis, start in enumerate(lead):
            if start or exporting:
                x = x.narrow(2 + axis, start, size[1 + axis])
        return x


class ResizeConvUp(nn.Module):
    """Nearest-neighbour resize to the recorded size, then a stride-1 'same' convolution.

    The usual cure for checkerboard artefacts of strided transposed convolutions.
    With ``tied`` the kernel is the encoder's, transposed and flipped (the
    adjoint of the encoder's convolution at stride 1).
    """

    def __init__(self, down: ConvDown, tied: bool):
        super().__init__()
        spec, dims = down.spec, down.dims
        self.dims, self.kernel = dims, spec.kernel
        in_channels, out_channels = down.conv.out_channels, down.conv.in_channels
        before, after = spec.kernel // 2, (spec.kernel - 1) // 2  # 'same' at stride 1
        # A flipped kernel needs the padding mirrored too.
        self.pads = [(after, before) if tied else (before, after)] * dims
        self.source = [down.conv] if tied else None
        if tied:
            self.weight = None
        else:
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *[spec.kernel] * dims))
            nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if spec.bias else None

    def forward(self, y: Tensor, size: Sequence[int], switches: Tensor | None = None) -> Tensor:
        if self.source:
            weight = self.source[0].weight.transpose(0, 1).flip(list(range(2, 2 + self.dims)))
        else:
            weight = self.weight
        x = F.interpolate(y, size=tuple(size[1:]), mode="nearest")
        x = F.pad(x, _pad_pairs(self.pads))
        return FUNCTIONS["conv", self.dims](x, weight, self.bias)


class PoolDown(nn.Module):
    """Max or average pooling in ceil mode; max pooling also returns its switches."""

    def __init__(self, spec: Pool, dims: int):
        super().__init__()
        self.spec, self.dims = spec, dims

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        k, s = self.spec.kernel, self.spec.stride
        if self.spec.mode == "max":
            y, switches = FUNCTIONS["max_pool", self.dims](x, k, s, ceil_mode=True, return_indices=True)
            return y, switches
        return FUNCTIONS["avg_pool", self.dims](x, k, s, ceil_mode=True), None


def nearest_unpool(y: Tensor, kernel: int, stride: int, size: Sequence[int]) -> Tensor:
    """Copy each pooled value back to every position of its window.

    For non-overlapping windows (stride >= kernel) this is the pseudo-inverse
    of average pooling: ``avg_pool(nearest_unpool(y)) == y`` for any y, the
    partial windows at an odd edge included. Positions that no window covered
    (stride > kernel) get zero. ``size`` is the spatial size to restore.
    """
    x = y
    for axis, n in enumerate(size):
        dim = 2 + axis
        x = x.unsqueeze(dim + 1).expand(*x.shape[: dim + 1], stride, *x.shape[dim + 1 :]).flatten(dim, dim + 1)
        if stride > kernel:
            covered = (torch.arange(x.shape[dim], device=x.device) % stride) < kernel
            x = x * covered.view(-1, *[1] * (x.dim() - dim - 1)).to(x.dtype)
        # The last window may run past the edge: keep the positions that exist.
        x = x.narrow(dim, 0, n)
    return x


class PoolUp(nn.Module):
    """Unpooling: max-unpooling at the recorded switches, else nearest-neighbour.

    Average pooling is always undone by :func:`nearest_unpool`. Max pooling
    uses the switches (argmax positions) its encoder recorded: the pooled value
    goes back to where the maximum was, zero elsewhere. ``decode`` on its own
    has no switches; then max pooling is undone by nearest-neighbour unpooling
    too.
    """

    def __init__(self, down: PoolDown):
        super().__init__()
        self.spec, self.dims = down.spec, down.dims

    def forward(self, y: Tensor, size: Sequence[int], switches: Tensor | None = None) -> Tensor:
        k, s = self.spec.kernel, self.spec.stride
        if switches is not None:
            out_size = tuple(size[1:])
            if torch.jit.is_tracing():  # sizes are traced tensors there; max_unpool wants ints
                out_size = tuple(int(n) for n in out_size)
            return FUNCTIONS["max_unpool", self.dims](y, switches, k, s, output_size=out_size)
        return nearest_unpool(y, k, s, size[1:])


class DenseDown(nn.Module):
    """Flatten, then a linear layer."""

    def __init__(self, spec: Dense, in_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, spec.features, bias=spec.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.linear(x.flatten(1)), None


class DenseUp(nn.Module):
    """Linear layer back to the flattened size, then unflatten to the recorded shape."""

    def __init__(self, down: DenseDown, tied: bool):
        super().__init__()
        out_features, in_features = down.linear.weight.shape
        self.source = [down.linear] if tied else None
        self.linear = None if tied else nn.Linear(out_features, in_features, bias=down.linear.bias is not None)
        self.bias = nn.Parameter(torch.zeros(in_features)) if tied and down.linear.bias is not None else None

    def forward(self, z: Tensor, size: Sequence[int], switches: Tensor | None = None) -> Tensor:
        x = F.linear(z, self.source[0].weight.t(), self.bias) if self.source else self.linear(z)
        return x.view(x.shape[0], *size)


class ResDown(nn.Module):
    """``x + bn(conv(act(bn(conv(x)))))`` at constant shape.

    The last batch norm starts at zero scale, so a new block is the identity
    and a deep stack trains like a shallow one at first (Goyal et al. 2017).
    """

    def __init__(self, spec: Res, channels: int, dims: int):
        super().__init__()
        self.spec, self.channels, self.dims = spec, channels, dims
        conv, bn = LAYERS["conv", dims], LAYERS["bn", dims]
        k = spec.kernel
        self.body = nn.Sequential(
            conv(channels, channels, k, padding=k // 2, bias=False),
            bn(channels),
            ACTIVATIONS[spec.act](Act(spec.act)),
            conv(channels, channels, k, padding=k // 2, bias=False),
            bn(channels),
        )
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return x + self.body(x), None


class ResUp(nn.Module):
    """The mirror of a residual block: another residual block with weights of its own."""

    def __init__(self, down: ResDown, tied: bool):
        super().__init__()
        if tied:
            # A residual block is not a linear map, so it has no transpose to share.
            raise ConvaeError(f"{down.spec.where}: tied weights are not defined for res blocks")
        self.block = ResDown(down.spec, down.channels, down.dims)

    def forward(self, y: Tensor, size: Sequence[int], switches: Tensor | None = None) -> Tensor:
        return self.block(y)[0]


def down_layer(spec: LayerSpec, in_shape: Sequence[int]) -> nn.Module:
    """The encoder's module for a weight layer, given its per-sample input shape."""
    dims = len(in_shape) - 1
    if isinstance(spec, Conv):
        return ConvDown(spec, in_shape[0], dims)
    if isinstance(spec, Pool):
        return PoolDown(spec, dims)
    if isinstance(spec, Dense):
        in_features = 1
        for s in in_shape:
            in_features *= s
        return DenseDown(spec, in_features)
    if isinstance(spec, Res):
        return ResDown(spec, in_shape[0], dims)
    raise TypeError(f"not a weight layer: {spec!r}")


def up_layer(down: nn.Module, tied: bool, upsample: str) -> nn.Module:
    """The decoder's mirror of an encoder module."""
    if isinstance(down, ConvDown):
        return ResizeConvUp(down, tied) if upsample == "resize" else ConvUp(down, tied)
    if isinstance(down, PoolDown):
        return PoolUp(down)
    if isinstance(down, DenseDown):
        return DenseUp(down, tied)
    if isinstance(down, ResDown):
        return ResUp(down, tied)
    raise TypeError(f"no mirror for {type(down).__name__}")
