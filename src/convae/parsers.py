"""Setting values from text, torch-free: the parsers behind the flags and config files.

Sizes (``1,28,28``, ``32x48``), booleans, integer lists, ``--compile`` modes, and the two small
grammars of a batch's corruption, each parsed once into a frozen value:

==================  ==================================================================
``--noise``         ``gaussian:SIGMA``, ``masking:P``, ``saltpepper:P`` (or ``none``):
                    :class:`Noise`, applied by :func:`convae.data.preprocess.corrupt`
``--augment``       ``flip``, ``shift:N``, ``flip+shift:N`` (or ``none``): :class:`Augment`,
                    applied by :func:`convae.data.preprocess.augment`
``--anomaly-        some of ``shuffle``, ``patch``, ``texture``, ``colour``, ``tone``,
sources``           ``rescaled`` joined by ``+``: what fills the synthetic anomalies
                    (:mod:`convae.data.anomalies`)
==================  ==================================================================
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from convae.errors import ConvaeError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes
NOISE_KINDS = ("gaussian", "masking", "saltpepper")
ANOMALY_SOURCES = ("shuffle", "patch", "texture", "colour", "tone", "rescaled")  # convae.data.anomalies.SOURCES


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"'{text}' is not true or false")


def parse_int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"'{text}' is not a list of integers like 0 or 1,7") from None


def parse_sizes(text: str) -> list[int]:
    """Positive integers separated by commas or x (``1,28,28``, ``32x48``); [] when the text is not that."""
    try:
        sizes = [int(s) for s in text.replace("x", ",").split(",") if s.strip()]
    except ValueError:
        return []
    return sizes if sizes and min(sizes) >= 1 else []


def parse_image_size(text: str) -> list[int]:
    shape = parse_sizes(text)
    if len(shape) == 1:
        shape *= 2
    if len(shape) != 2:
        raise ValueError(f"'{text}' is not an image size like 28 or 32,48")
    return shape


def parse_compile(text: str) -> bool | str:
    if text in COMPILE_MODES:
        return text
    try:
        return parse_bool(text)
    except ValueError:
        raise ValueError(f"'{text}' is not true, false or one of {', '.join(COMPILE_MODES)}") from None


@dataclass(frozen=True)
class Noise:
    """Input corruption for denoising autoencoders, parsed from ``kind:amount``."""

    kind: str
    amount: float

    @staticmethod
    @functools.cache  # frozen values: each text is parsed once, however many modules ask
    def parse(text: str | None) -> Noise | None:
        if not text or text == "none":
            return None
        kind, _, amount = text.partition(":")
        if kind not in NOISE_KINDS:
            raise ConvaeError(f"noise '{text}': kind must be one of {', '.join(NOISE_KINDS)} (e.g. gaussian:0.3)")
        try:
            value = float(amount)
        except ValueError:
            raise ConvaeError(f"noise '{text}': '{amount}' is not a number (e.g. {kind}:0.3)") from None
        if not math.isfinite(value) or value < 0 or (kind != "gaussian" and value > 1):
            raise ConvaeError(f"noise '{text}': amount must be >= 0 (and <= 1 for {kind})")
        return Noise(kind, value)

    def __str__(self) -> str:
        return f"{self.kind}:{self.amount:g}"


@dataclass(frozen=True)
class Augment:
    """Random flips and translations of training samples, parsed from ``flip``, ``shift:N`` or ``flip+shift:N``.

    A regulariser against memorising the training set. On Fashion-MNIST at the
    presets' budgets it did not lower the test MSE (benchmarks/RESULTS.md).
    """

    flip: bool = False
    shift: int = 0

    @staticmethod
    @functools.cache
    def parse(text: str | None) -> Augment | None:
        if not text or text == "none":
            return None
        flip, shift = False, 0
        for part in text.split("+"):
            kind, _, amount = part.partition(":")
            if kind == "flip" and not amount:
                flip = True
            elif kind == "shift" and amount.isdigit() and int(amount) > 0:
                shift = int(amount)
            else:
                raise ConvaeError(f"augment '{text}': expected flip, shift:N (N a positive integer) or flip+shift:N")
        return Augment(flip, shift)

    def __str__(self) -> str:
        return "+".join((["flip"] if self.flip else []) + ([f"shift:{self.shift}"] if self.shift else []))


@functools.cache
def parse_sources(text: str) -> tuple[str, ...]:
    """Synthetic-anomaly sources joined by ``+``, each once."""
    parts = tuple(p.strip() for p in text.split("+"))
    bad = [p for p in parts if p not in ANOMALY_SOURCES]
    if bad or not parts or len(set(parts)) != len(parts):
        raise ConvaeError(
            f"anomaly sources '{text}': expected some of {', '.join(ANOMALY_SOURCES)} joined by +, each once"
        )
    return parts
