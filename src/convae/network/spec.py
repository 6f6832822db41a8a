"""Architecture specs: text (or a list) -> typed layer specs, and shape inference.

No torch here: everything in this module is plain arithmetic on sizes, so the
grammar and the shape rules can be read, tested and reused without a model.

Grammar
-------
An architecture is a whitespace-separated sequence of layers; a layer is
``name`` or ``name(args)`` with positional and ``key=value`` arguments::

    conv(32,3,stride=2) bn relu conv(64,3,stride=2) bn relu dense(32)

=============  ====================================  ==========================================
layer          arguments (defaults)                  meaning
=============  ====================================  ==========================================
conv           C, K, stride=1, padding=same,         convolution with C output channels and kernel
               bias=true                             K. ``padding``: ``same`` (output ceil(n/S),
                                                     as in TensorFlow), ``valid`` (no padding) or
                                                     an integer P on every side.
maxpool        K, stride=K                           max pooling; a window that runs past an odd
                                                     edge is kept (ceil mode), so 9 -> 5 for K=2.
                                                     The input must be at least K wide.
avgpool        K, stride=K                           average pooling, ceil mode as above; the
                                                     average of a partial window is over the
                                                     positions inside the input. Needs
                                                     stride >= K so that it has a pseudo-inverse.
dense          N, bias=true                          fully connected layer to N features;
                                                     flattens what comes before it.
res            K=3, act=relu                         residual block at constant shape (ResNet's
                                                     basic block): x + bn(conv(act(bn(conv(x)))))
                                                     with C->C convolutions of odd kernel K. Its
                                                     mirror is a residual block of its own.
bn             (none)                                batch normalisation over channels (features
                                                     after a dense layer).
relu, gelu,    (none)                                activations.
silu, tanh,
sigmoid
leakyrelu      a=0.01                                leaky ReLU with negative slope a.
dropout        p=0.5                                 dropout with probability p.
skip           mode=cat                              a skip connection (U-Net): the block's output
                                                     is joined to the decoder where its mirror
                                                     begins, at the same shape. ``cat``
                                                     concatenates and merges the channels back
                                                     with a 1x1 convolution; ``add`` sums.
=============  ====================================  ==========================================

Booleans are ``true``/``false`` (any case). The same layers can be given as a
list, for config files: each item either a string in the grammar above
(``"conv(32,3,stride=2)"``) or a mapping ``{"type": "conv", "channels": 32,
"kernel": 3, "stride": 2}`` whose keys are the argument names in the table
(``C`` is ``channels``, ``K`` is ``kernel``, ``N`` is ``features``, ``a`` is
``slope``).

Blocks
------
A *weight layer* (conv, maxpool, avgpool, dense, res) starts a block; the bn,
activation, dropout and skip layers that follow it belong to that block. A spec must
start with a weight layer. The decoder mirrors the blocks in reverse order.

Skip connections
----------------
``skip`` ends a block whose output the decoder receives again: a U-Net is an
autoencoder whose blocks carry skips, declared like any other::

    conv(16,3) relu skip conv(32,3,stride=2) relu skip conv(64,3,stride=2) relu

Decoder block *i* (the mirror of encoder block *i*) starts at the shape
encoder block *i* gave, so the two always line up, odd sizes included. A skip
cannot end the last block (its output is the code) nor sit before a dense
layer (a flat code has no spatial layout to join across).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from convae.errors import ConvaeError

Shape = tuple[int, ...]
# Bounds that keep a typo (conv(32000000,3)) from reaching the allocator: one line instead of a C++ stack.
LIMITS = {"channels": 65_536, "features": 65_536, "kernel": 1_024, "stride": 1_024, "padding": 1_024}
MAX_LAYERS = 1_000
OUTPUTS = ("sigmoid", "identity", "tanh")  # the decoder's last activation
UPSAMPLE = ("transpose", "resize")  # how the decoder mirrors a strided convolution


@dataclass(frozen=True)
class _Layer:
    # Where the layer came from, for error messages: 1-based position and text.
    position: int = field(default=0, kw_only=True, compare=False)
    token: str = field(default="", kw_only=True, compare=False)

    @property
    def where(self) -> str:
        return f"layer {self.position} '{self.token}'"


@dataclass(frozen=True)
class Conv(_Layer):
    channels: int
    kernel: int
    stride: int = 1
    padding: str | int = "same"
    bias: bool = True

    @property
    def pads(self) -> tuple[int, int]:
        """Zero padding (before, after) on each spatial axis.

        ``same`` pads K-1 in total whatever the input size n is: with that the
        output size is ceil(n / S) for every n, and for odd K the padding is
        symmetric, which keeps the fast symmetric-padding kernels and a graph
        that does not depend on the input size. For even K the extra element
        goes before.
        """
        if self.padding == "same":
            return (self.kernel // 2, (self.kernel - 1) // 2)
        if self.padding == "valid":
            return (0, 0)
        return (int(self.padding), int(self.padding))

    def out_size(self, n: int) -> int:
        before, after = self.pads
        return (n + before + after - self.kernel) // self.stride + 1


@dataclass(frozen=True)
class Pool(_Layer):
    mode: str  # "max" or "avg"
    kernel: int
    stride: int  # the parser fills in the kernel size when it is not given

    def out_size(self, n: int) -> int:
        # PyTorch's ceil-mode rule: round up, but the last window must start
        # inside the input. An input smaller than the window is refused (as
        # PyTorch's 3-D pooling does), the same in every dimension.
        k, s = self.kernel, self.stride
        if n < k:
            return 0
        out = -(-(n - k) // s) + 1
        if (out - 1) * s >= n:
            out -= 1
        return out


@dataclass(frozen=True)
class Dense(_Layer):
    features: int
    bias: bool = True


@dataclass(frozen=True)
class Res(_Layer):
    kernel: int = 3
    act: str = "relu"

    def out_size(self, n: int) -> int:
        return n


@dataclass(frozen=True)
class Norm(_Layer):
    pass


@dataclass(frozen=True)
class Act(_Layer):
    name: str
    slope: float = 0.01  # only used by leakyrelu


@dataclass(frozen=True)
class Dropout(_Layer):
    p: float = 0.5


SKIP_MODES = ("cat", "add")


@dataclass(frozen=True)
class Skip(_Layer):
    mode: str = "cat"


WeightLayer = Conv | Pool | Dense | Res
PostLayer = Norm | Act | Dropout | Skip
LayerSpec = WeightLayer | PostLayer

ACTIVATIONS = ("relu", "leakyrelu", "gelu", "silu", "tanh", "sigmoid")

# name -> (constructor, positional argument names, keyword argument names,
#          fixed keyword values). Mapping keys use the same names.
_GRAMMAR: dict[str, tuple[type, tuple[str, ...], tuple[str, ...], dict[str, Any]]] = {
    "conv": (Conv, ("channels", "kernel"), ("stride", "padding", "bias"), {}),
    "maxpool": (Pool, ("kernel",), ("stride",), {"mode": "max"}),
    "avgpool": (Pool, ("kernel",), ("stride",), {"mode": "avg"}),
    "dense": (Dense, ("features",), ("bias",), {}),
    "res": (Res, ("kernel",), ("act",), {}),
    "bn": (Norm, (), (), {}),
    "dropout": (Dropout, ("p",), (), {}),
    "skip": (Skip, ("mode",), (), {}),
    "leakyrelu": (Act, ("slope",), (), {"name": "leakyrelu"}),
    **{a: (Act, (), (), {"name": a}) for a in ACTIVATIONS if a != "leakyrelu"},
}
# Short names accepted for keyword arguments (``leakyrelu(a=0.2)``, ``{"C": 32}``).
_ALIASES = {"a": "slope", "C": "channels", "K": "kernel", "N": "features", "S": "stride"}
_REQUIRED = {"conv": ("channels", "kernel"), "maxpool": ("kernel",), "avgpool": ("kernel",), "dense": ("features",)}
_TOKEN = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^()]*)\))?")


@dataclass(frozen=True)
class Block:
    """A weight layer with the norm, activation and dropout layers after it."""

    layer: WeightLayer
    post: tuple[PostLayer, ...] = ()


def _split_tokens(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            bad = text[pos:].split()[0]
            raise ConvaeError(f"layer {len(tokens) + 1} '{bad}': cannot parse; expected name or name(args)")
        tokens.append(m.group(0).strip())
        pos = m.end()
    return tokens


def _convert(key: str, value: Any, where: str) -> Any:
    """Check and convert one argument to the type its field expects."""

    def fail(expected: str) -> ConvaeError:
        return ConvaeError(f"{where}: {key}={value!r} is not {expected}")

    if isinstance(value, str):
        value = value.strip()
    if key in ("channels", "kernel", "features", "stride"):
        try:
            number = int(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or str(number) != str(value).strip() or number < 1:
            raise fail("a positive integer")
        if number > LIMITS[key]:
            raise fail(f"a positive integer of at most {LIMITS[key]:,}")
        return number
    if key == "padding":
        if isinstance(value, str) and value.lower() in ("same", "valid"):
            return value.lower()
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise fail("'same', 'valid' or an integer >= 0") from None
        if number < 0 or str(number) != str(value).strip() or number > LIMITS["padding"]:
            raise fail(f"'same', 'valid' or an integer from 0 to {LIMITS['padding']:,}")
        return number
    if key == "bias":
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
        raise fail("true or false")
    if key == "act":
        if str(value).lower() not in ACTIVATIONS:
            raise fail(f"an activation ({', '.join(ACTIVATIONS)})")
        return str(value).lower()
    if key == "mode":
        if str(value).lower() not in SKIP_MODES:
            raise fail(f"one of {', '.join(SKIP_MODES)}")
        return str(value).lower()
    if key in ("p", "slope"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise fail("a number") from None
        if key == "p" and not 0 <= number < 1:
            raise fail("a probability in [0, 1)")
        if not math.isfinite(number):
            raise fail("a finite number")
        return number
    raise AssertionError(f"no converter for {key}")  # pragma: no cover - grammar table bug


def _make(name: str, args: list[str], kwargs: dict[str, Any], position: int, token: str) -> LayerSpec:
    where = f"layer {position} '{token}'"
    if name not in _GRAMMAR:
        known = ", ".join(sorted(_GRAMMAR))
        raise ConvaeError(f"{where}: unknown layer '{name}' (known: {known})")
    cls, positional, keywords, fixed = _GRAMMAR[name]
    if len(args) > len(positional):
        raise ConvaeError(f"{where}: takes at most {len(positional)} positional argument(s), got {len(args)}")
    values: dict[str, Any] = dict(zip(positional, args))
    for key, value in kwargs.items():
        key = _ALIASES.get(key, key)
        if key not in positional and key not in keywords:
            allowed = ", ".join(positional + keywords) or "none"
            raise ConvaeError(f"{where}: unknown argument '{key}' (arguments: {allowed})")
        if key in values:
            raise ConvaeError(f"{where}: argument '{key}' given twice")
        values[key] = value
    for key in _REQUIRED.get(name, ()):
        if key not in values:
            raise ConvaeError(f"{where}: missing argument '{key}'")
    converted = {key: _convert(key, value, where) for key, value in values.items()}
    if cls is Pool:
        converted.setdefault("stride", converted["kernel"])
    layer = cls(**fixed, **converted, position=position, token=token)
    if isinstance(layer, Pool) and layer.mode == "avg" and layer.stride < layer.kernel:
        raise ConvaeError(f"{where}: avgpool needs stride >= kernel (non-overlapping windows) to have a pseudo-inverse")
    if isinstance(layer, Res) and layer.kernel % 2 == 0:
        # An even kernel cannot keep the shape with symmetric padding.
        raise ConvaeError(f"{where}: res needs an odd kernel, not {layer.kernel}")
    return layer


def _parse_token(token: str, position: int) -> LayerSpec:
    m = _TOKEN.fullmatch(token)
    if not m:
        raise ConvaeError(f"layer {position} '{token}': cannot parse; expected name or name(args)")
    name, argtext = m.group(1).lower(), m.group(2)
    args: list[str] = []
    kwargs: dict[str, str] = {}
    if argtext is not None and argtext.strip():
        for part in argtext.split(","):
            part = part.strip()
            if not part:
                raise ConvaeError(f"layer {position} '{token}': empty argument")
            if "=" in part:
                key, _, value = part.partition("=")
                if key.strip() in kwargs:
                    raise ConvaeError(f"layer {position} '{token}': argument '{key.strip()}' given twice")
                kwargs[key.strip()] = value.strip()
            elif kwargs:
                raise ConvaeError(f"layer {position} '{token}': positional argument '{part}' after a keyword")
            else:
                args.append(part)
    return _make(name, args, kwargs, position, token)


def _parse_mapping(item: dict, position: int) -> LayerSpec:
    item = dict(item)
    name = str(item.pop("type", item.pop("name", ""))).lower()
    token = name + "(" + ",".join(f"{k}={v}" for k, v in item.items()) + ")" if item else name
    if not name:
        raise ConvaeError(f"layer {position} '{item}': a mapping needs a 'type' key")
    return _make(name, [], item, position, token)


def parse(arch: str | Sequence[str | dict]) -> list[LayerSpec]:
    """Parse an architecture string (or a list of layers) into layer specs.

    Raises ``ConvaeError`` (a ``ValueError``) naming the token and its position.
    """
    if isinstance(arch, str):
        items: list[Any] = _split_tokens(arch)
    elif isinstance(arch, Sequence):
        items = list(arch)
    else:
        raise ConvaeError(f"architecture must be a string or a list of layers, not {type(arch).__name__}")
    layers: list[LayerSpec] = []
    for position, item in enumerate(items, start=1):
        if isinstance(item, str):
            inner = _split_tokens(item)
            if len(inner) != 1:
                raise ConvaeError(f"layer {position} '{item}': a list item must hold exactly one layer")
            layers.append(_parse_token(inner[0], position))
        elif isinstance(item, dict):
            layers.append(_parse_mapping(item, position))
        else:
            raise ConvaeError(f"layer {position} '{item}': expected a string or a mapping")
    if not layers:
        raise ConvaeError("architecture is empty: give at least one conv, pool or dense layer")
    if len(layers) > MAX_LAYERS:
        raise ConvaeError(f"architecture has {len(layers):,} layers; convae builds at most {MAX_LAYERS:,}")
    return layers


def to_blocks(layers: Sequence[LayerSpec]) -> list[Block]:
    """Group layers into blocks: each weight layer with the layers after it. Checks that skips
    can line up (:func:`skip_of`)."""
    blocks: list[Block] = []
    for layer in layers:
        if isinstance(layer, WeightLayer):
            blocks.append(Block(layer))
        elif not blocks:
            raise ConvaeError(f"{layer.where}: a spec must start with conv, maxpool, avgpool, dense or res")
        elif blocks[-1].post and isinstance(blocks[-1].post[-1], Skip):
            raise ConvaeError(f"{layer.where}: skip must end its block (it passes on the block's output)")
        else:
            blocks[-1] = Block(blocks[-1].layer, (*blocks[-1].post, layer))
    for i, block in enumerate(blocks):
        skip = skip_of(block)
        if skip is None:
            continue
        if i == len(blocks) - 1:
            raise ConvaeError(f"{skip.where}: the last block's output is the code; a skip would join it to itself")
        dense = next((b.layer for b in blocks[i:] if isinstance(b.layer, Dense)), None)
        if dense is not None:
            raise ConvaeError(
                f"{skip.where}: cannot line up across the dense layer at {dense.where} "
                "(a flat code has no spatial layout to join); a U-Net is convolutional"
            )
    return blocks


def skip_of(block: Block) -> Skip | None:
    """The block's skip connection, if it has one (it ends the block)."""
    return block.post[-1] if block.post and isinstance(block.post[-1], Skip) else None


def infer_shapes(blocks: Sequence[Block], input_shape: Shape) -> list[Shape]:
    """Per-sample shapes: ``[input, after block 1, ..., code]``.

    A flat shape ``(N,)`` means features after a dense layer. Raises
    ``ConvaeError`` naming the layer and the size when a dimension would drop
    below 1 or a layer does not fit what comes before it.
    """
    shape = tuple(int(s) for s in input_shape)
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise ConvaeError(
            f"input shape {shape} must be (channels, *spatial) with 1 to 3 spatial dimensions, all sizes >= 1"
        )
    shapes = [shape]
    for block in blocks:
        layer = block.layer
        if isinstance(layer, Dense):
            shape = (layer.features,)
        elif len(shape) == 1:
            raise ConvaeError(f"{layer.where}: needs spatial input, but comes after a dense layer")
        else:
            sizes = []
            for axis, n in enumerate(shape[1:]):
                m = layer.out_size(n)
                if m < 1:
                    raise ConvaeError(
                        f"{layer.where}: input size {n} along spatial axis {axis} is too small "
                        f"(output would be {m}); input shape at this layer is {shape}"
                    )
                sizes.append(m)
            channels = layer.channels if isinstance(layer, Conv) else shape[0]
            shape = (channels, *sizes)
        shapes.append(shape)
    return shapes


def describe(layer: LayerSpec) -> str:
    """The canonical text of a layer, parseable by :func:`parse`."""
    if isinstance(layer, Conv):
        extra = ""
        if layer.stride != 1:
            extra += f",stride={layer.stride}"
        if layer.padding != "same":
            extra += f",padding={layer.padding}"
        if not layer.bias:
            extra += ",bias=false"
        return f"conv({layer.channels},{layer.kernel}{extra})"
    if isinstance(layer, Pool):
        stride = f",stride={layer.stride}" if layer.stride != layer.kernel else ""
        return f"{layer.mode}pool({layer.kernel}{stride})"
    if isinstance(layer, Dense):
        return f"dense({layer.features}{'' if layer.bias else ',bias=false'})"
    if isinstance(layer, Res):
        return f"res({layer.kernel}{'' if layer.act == 'relu' else ',act=' + layer.act})"
    if isinstance(layer, Norm):
        return "bn"
    if isinstance(layer, Dropout):
        return f"dropout({layer.p:g})"
    if isinstance(layer, Skip):
        return "skip" if layer.mode == "cat" else f"skip({layer.mode})"
    if layer.name == "leakyrelu":
        return f"leakyrelu({layer.slope:g})"
    return layer.name


def describe_block(block: Block) -> str:
    """The canonical text of a block: its weight layer, then the layers after it."""
    return " ".join(describe(layer) for layer in (block.layer, *block.post))


def canonical(arch: str | Sequence[str | dict]) -> str:
    """Normalise an architecture to its canonical string."""
    return " ".join(describe(layer) for layer in parse(arch))


__all__ = [
    "Act",
    "Block",
    "Conv",
    "Dense",
    "Dropout",
    "LayerSpec",
    "Norm",
    "Pool",
    "Res",
    "Shape",
    "Skip",
    "canonical",
    "describe",
    "infer_shapes",
    "parse",
    "skip_of",
    "to_blocks",
]

# Keep the grammar table in sync with the dataclass fields (cheap import-time check).
assert all(set(pos + kw) <= {f.name for f in fields(cls)} for cls, pos, kw, _ in _GRAMMAR.values())
