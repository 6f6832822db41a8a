"""The autoencoder: an encoder built from a spec and the decoder that mirrors it.

Each encoder block is a weight layer (conv, pool, dense, res) with the norm,
activation and dropout after it. The decoder runs the blocks in reverse: the
mirror of the weight layer (transposed conv, unpooling, dense back to the
flattened size, a residual block of its own), then the norm and activation
that the encoder applied at the shape it restores; the last decoder block ends
with the output activation.

During ``forward`` the encoder records the size each block saw and the
switches of every max pooling; the decoder uses them to restore exactly the
input shape. ``decode`` on its own uses the sizes inferred at build time.

A block ending in ``skip`` also hands its output to the decoder, which joins it
(:class:`~convae.network.layers.Join`) to its own features just before that
block's mirror: declared this way, a U-Net is an autoencoder with skips.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from convae.errors import ConvaeError
from convae.network.layers import ACTIVATIONS, Join, down_layer, post_layer, up_layer
from convae.network.spec import (
    OUTPUTS,
    UPSAMPLE,
    Act,
    Block,
    Conv,
    Dense,
    Res,
    Shape,
    Skip,
    WeightLayer,
    canonical,
    describe,
    describe_block,
    infer_shapes,
    parse,
    skip_of,
    to_blocks,
)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model; stored inside checkpoints."""

    arch: str | list = ""
    input_shape: tuple[int, ...] = ()
    output: str = "sigmoid"
    tied: bool = False
    upsample: str = "transpose"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data


class EncoderBlock(nn.Module):
    def __init__(self, block: Block, in_shape: Shape, out_shape: Shape):
        super().__init__()
        self.spec = block
        self.down = down_layer(block.layer, in_shape)
        self.post = nn.Sequential(*(post_layer(p, out_shape) for p in block.post if not isinstance(p, Skip)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        y, switches = self.down(x)
        return self.post(y), switches


class DecoderBlock(nn.Module):
    def __init__(self, up: nn.Module, post: nn.Sequential, label: str):
        super().__init__()
        self.up, self.post, self.label = up, post, label

    def forward(self, y: Tensor, size: Sequence[int], switches: Tensor | None) -> Tensor:
        return self.post(self.up(y, size, switches))


def _up_label(layer: WeightLayer, out_shape: Shape, upsample: str) -> str:
    """How the decoder's mirror of ``layer`` reads in the summary."""
    if isinstance(layer, Dense):
        return f"dense({math.prod(out_shape)})" + (" unflatten" if len(out_shape) > 1 else "")
    if isinstance(layer, Conv):
        verb = "resizeconv" if upsample == "resize" else "convT"
        return verb + describe(replace(layer, channels=out_shape[0]))[len("conv") :]
    if isinstance(layer, Res):
        return describe(layer)
    return describe(layer).replace("pool", "unpool", 1)


class AutoEncoder(nn.Module):
    """A convolutional autoencoder whose decoder mirrors its encoder.

    Args:
        arch: the encoder, as an architecture string or a list of layers (see
            :mod:`convae.network.spec` for the grammar).
        input_shape: per-sample shape ``(channels, *spatial)``, 1 to 3 spatial
            dims.
        output: the decoder's last activation: ``sigmoid`` for data in
            [0, 1], ``identity`` for standardised data, or ``tanh``.
        tied: the decoder's transposed convolutions and dense layers reuse the
            encoder's weights (transposed), with biases of their own.
        upsample: ``transpose`` (transposed convolutions) or ``resize``
            (nearest-neighbour resize, then a stride-1 convolution).
    """

    def __init__(
        self,
        arch: str | Sequence[str | dict],
        input_shape: Sequence[int],
        *,
        output: str = "sigmoid",
        tied: bool = False,
        upsample: str = "transpose",
    ):
        super().__init__()
        if output not in OUTPUTS:
            raise ConvaeError(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")
        if upsample not in UPSAMPLE:
            raise ConvaeError(f"upsample must be one of {', '.join(UPSAMPLE)}, not {upsample!r}")
        blocks = to_blocks(parse(arch))
        self.shapes: list[Shape] = infer_shapes(blocks, tuple(input_shape))
        self.config = ModelConfig(
            arch=canonical(arch), input_shape=self.shapes[0], output=output, tied=bool(tied), upsample=upsample
        )
        self.blocks = blocks
        self.has_dense = any(isinstance(b.layer, Dense) for b in blocks)
        self.encoder = nn.ModuleList(EncoderBlock(b, self.shapes[i], self.shapes[i + 1]) for i, b in enumerate(blocks))
        decoder = []
        for i in reversed(range(len(blocks))):
            # Decoder block i restores shapes[i]: it ends with what the encoder
            # applied at that shape (block i-1's post layers), or with the
            # output activation for the last block.
            if i == 0:
                post = nn.Sequential(ACTIVATIONS[output](Act(output)))
            else:
                post = nn.Sequential(
                    *(post_layer(p, self.shapes[i]) for p in blocks[i - 1].post if not isinstance(p, Skip))
                )
            up = up_layer(self.encoder[i].down, tied, upsample)
            decoder.append(DecoderBlock(up, post, _up_label(blocks[i].layer, self.shapes[i], upsample)))
        self.decoder = nn.ModuleList(decoder)
        # Block i's skip meets the decoder where block i's mirror begins, at shapes[i + 1].
        self.joins = nn.ModuleDict(
            {
                str(i): Join(skip.mode, self.shapes[i + 1][0], len(self.shapes[i + 1]) - 1)
                for i, b in enumerate(blocks)
                if (skip := skip_of(b)) is not None
            }
        )

    @property
    def input_shape(self) -> Shape:
        return self.shapes[0]

    @property
    def code_shape(self) -> Shape:
        return self.shapes[-1]

    def _check_input(self, x: Tensor) -> None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        expected = self.input_shape
        actual = tuple(x.shape[1:])
        if x.dim() != len(expected) + 1 or actual[0] != expected[0] or (self.has_dense and actual != expected):
            spatial = "" if self.has_dense else f" (any spatial size for this spec: (N, {expected[0]}, ...))"
            raise ConvaeError(
                f"expected input of shape (N, {', '.join(map(str, expected))}){spatial}, got {tuple(x.shape)}"
            )
        if not self.has_dense and actual != expected:
            infer_shapes(self.blocks, actual)  # raises a clear error if too small

    @property
    def has_skips(self) -> bool:
        return len(self.joins) > 0

    def _encode(self, x: Tensor) -> tuple[Tensor, list[list[int]], list[Tensor | None], dict[str, Tensor]]:
        self._check_input(x)
        sizes, switches, skips = [], [], {}
        for i, block in enumerate(self.encoder):
            sizes.append(list(x.shape[1:]))
            x, s = block(x)
            switches.append(s)
            if str(i) in self.joins:
                skips[str(i)] = x
        return x, sizes, switches, skips

    def encode(self, x: Tensor) -> Tensor:
        """The code of each sample: ``(N, *code_shape)``."""
        return self._encode(x)[0]

    def _decode(
        self,
        z: Tensor,
        sizes: Sequence[Sequence[int]],
        switches: Sequence[Tensor | None],
        skips: dict[str, Tensor] | None = None,
    ) -> Tensor:
        for i, block in enumerate(self.decoder):
            j = len(self.decoder) - 1 - i
            if skips and str(j) in skips:
                z = self.joins[str(j)](z, skips[str(j)])
            z = block(z, sizes[j], switches[j])
        return z

    def decode(self, z: Tensor, output_shape: Sequence[int] | None = None) -> Tensor:
        """Decode codes alone (without a preceding ``encode``).

        The output has the model's ``input_shape``, or ``output_shape`` when
        given (specs without dense layers accept other spatial sizes). With no
        recorded switches, max pooling is undone by nearest-neighbour
        unpooling (each value copied to its whole window).
        """
        if self.has_skips:
            raise ConvaeError("this model has skip connections: its decoder needs the encoder's outputs, not codes")
        shapes = self.shapes if output_shape is None else infer_shapes(self.blocks, tuple(output_shape))
        if tuple(z.shape[1:]) != shapes[-1] and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            hint = "" if output_shape is not None else "; pass output_shape= to decode to another size"
            raise ConvaeError(
                f"expected codes of shape (N, {', '.join(map(str, shapes[-1]))}), got {tuple(z.shape)}{hint}"
            )
        return self._decode(z, [list(s) for s in shapes[:-1]], [None] * len(self.decoder))

    def forward(self, x: Tensor) -> Tensor:
        z, sizes, switches, skips = self._encode(x)
        return self._decode(z, sizes, switches, skips)

    def forward_with_code(self, x: Tensor, decoded: int | None = None) -> tuple[Tensor, Tensor]:
        """The reconstruction and the code of each sample from one pass (for a training term on the codes).

        With ``decoded``, only the first ``decoded`` samples are reconstructed: the
        others are there for their codes alone (a contrastive term's views).
        """
        z, sizes, switches, skips = self._encode(x)
        if decoded is None:
            return self._decode(z, sizes, switches, skips), z
        kept = [s if s is None else s[:decoded] for s in switches]
        return self._decode(z[:decoded], sizes, kept, {k: v[:decoded] for k, v in skips.items()}), z

    def summary(self) -> str:
        """A table of encoder and decoder blocks with output shapes and parameter counts."""
        rows: list[tuple[str, str, str, str]] = []
        for i, (block, module) in enumerate(zip(self.blocks, self.encoder)):
            rows.append((f"E{i + 1}", describe_block(block), str(self.shapes[i + 1]), f"{_count(module):,}"))
        for i, module in enumerate(self.decoder):
            j = len(self.decoder) - 1 - i
            post = " ".join(_post_name(m) for m in module.post)
            label, params = module.label, _count(module)
            if str(j) in self.joins:  # the join happens first, on the way into the mirror
                join = self.joins[str(j)]
                label, params = f"join skip({join.mode}) {label}", params + _count(join)
            rows.append((f"D{j + 1}", f"{label} {post}".strip(), str(self.shapes[j]), f"{params:,}"))
        headers = ("block", "layers", "output shape", "params")
        widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(headers)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if k < 3 else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        total = sum(p.numel() for p in self.parameters())
        cfg = self.config
        out = [
            f"AutoEncoder  input {self.input_shape}  code {self.code_shape}  output {cfg.output}"
            + ("  tied" if cfg.tied else "")
            + (f"  upsample {cfg.upsample}" if cfg.upsample != "transpose" else ""),
            line(headers),
            line(["-" * w for w in widths]),
            *(line(r) for r in rows[: len(self.blocks)]),
            line(["-" * w for w in widths]),
            *(line(r) for r in rows[len(self.blocks) :]),
            line(["-" * w for w in widths]),
            f"code shape: {self.code_shape}",
            f"parameters: {total:,}",
        ]
        return "\n".join(out)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _post_name(module: nn.Module) -> str:
    names = {nn.BatchNorm1d: "bn", nn.BatchNorm2d: "bn", nn.BatchNorm3d: "bn", nn.Dropout: "dropout"}
    if type(module) in names:
        return names[type(module)]
    if isinstance(module, nn.LeakyReLU):
        return f"leakyrelu({module.negative_slope:g})"
    return type(module).__name__.lower()


def build(
    arch: str | Sequence[str | dict],
    input_shape: Sequence[int],
    *,
    output: str = "sigmoid",
    tied: bool = False,
    upsample: str = "transpose",
) -> AutoEncoder:
    """Build an :class:`AutoEncoder` from an architecture string or list."""
    return AutoEncoder(arch, input_shape, output=output, tied=tied, upsample=upsample)


def from_config(config: ModelConfig | dict) -> AutoEncoder:
    """Rebuild a model from its :class:`ModelConfig` (or the dict form)."""
    if isinstance(config, dict):
        config = ModelConfig(**config)
    return build(config.arch, config.input_shape, output=config.output, tied=config.tied, upsample=config.upsample)


__all__ = ["AutoEncoder", "ModelConfig", "build", "from_config"]
