"""Named architectures with the training recipe that suits them (a registry like timm's).

A preset is an encoder spec plus training settings; any setting the user gives
explicitly (flag or config file) wins over the preset's. The default preset's
recipe is also the default of every setting (``convae.config``), so a recipe
names whatever it does differently from that. Presets are written
for 28x28 grayscale images but build for any input shape the layers admit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from convae.errors import ConvaeError


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str
    description: str
    train: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, Preset] = {}
DEFAULT_PRESET = "fmnist-32"


def register(preset: Preset) -> Preset:
    if preset.name in _REGISTRY:
        raise ValueError(f"preset {preset.name!r} is already registered")
    _REGISTRY[preset.name] = preset
    return preset


def get(name: str) -> Preset:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConvaeError(f"unknown preset '{name}' (known: {', '.join(sorted(_REGISTRY))})") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def is_preset(arch: object) -> bool:
    return isinstance(arch, str) and arch in _REGISTRY


def resolve(arch: str | list) -> str | list:
    """The architecture of a preset name; any other architecture unchanged.

    A bare word with a hyphen (``fmnist-99``) can only be meant as a preset,
    so an unknown one is an error that lists the presets.
    """
    if is_preset(arch):
        return _REGISTRY[arch].arch
    if isinstance(arch, str) and "-" in arch and "(" not in arch and " " not in arch:
        get(arch)
    return arch


# The Fashion-MNIST presets share one design, chosen by the ablations in
# benchmarks/RESULTS.md: strided convolutions with batch norm and GELU, then a
# 512-wide hidden dense layer before the code (a nonlinear bottleneck; the
# decoder mirrors it), AdamW with one-cycle. Width buys quality at a CPU cost.
_NARROW = "conv(32,3,stride=2) bn gelu conv(64,3,stride=2) bn gelu conv(128,3,stride=2) bn gelu dense(512) bn gelu"
_WIDE = "conv(64,3,stride=2) bn gelu conv(128,3,stride=2) bn gelu conv(256,3,stride=2) bn gelu dense(512) bn gelu"
_RECIPE = {"batch_size": 128, "lr": 2e-3, "optimizer": "adamw", "schedule": "onecycle"}
# Against the overfitting of 30-epoch wide runs (training loss 20-40 % under the test loss):
# 4.6 % better at code 64, nothing at code 16, 3 % at code 32 on a GPU (benchmarks/RESULTS.md).
_LONG_RECIPE = {**_RECIPE, "batch_size": 256, "weight_decay": 0.05, "augment": "flip", "val_fraction": 0.0}

register(
    Preset(
        "fmnist-32",
        f"{_NARROW} dense(32)",
        "default: three strided conv stages with batch norm and GELU, a 512-wide hidden layer, 32-d code; "
        "minutes on a laptop CPU",
        {"epochs": 15, **_RECIPE},
    )
)
register(
    Preset(
        "fmnist-32-wide",
        f"{_WIDE} dense(32)",
        "the default's design with 64-128-256 channels, 30 epochs, flips and shifts of up to one pixel: "
        "the best at code 32 that a CPU trains in half an hour",
        # The shifts: 0.00575 against 0.00591, and validation loss no longer above training loss.
        {"epochs": 30, **_RECIPE, "augment": "flip+shift:1"},
    )
)
register(
    Preset(
        "fmnist-16",
        f"{_WIDE} dense(16)",
        "16-d code: the wide design, 30 epochs",
        {"epochs": 30, **_RECIPE},
    )
)
register(
    Preset(
        "fmnist-64",
        f"{_WIDE} dense(64)",
        "64-d code: the wide design, 30 epochs with batch 256, weight decay 0.05, horizontal flips "
        "and all training images (no validation split)",
        {"epochs": 30, **_LONG_RECIPE},
    )
)
# The best at codes 32, 16 and 64 (measured on a CPU): benchmarks/RESULTS.md.
# About 5.5x the wide design's FLOPs: an hour and a half per 30 epochs on a 2-core CPU.
_RES = (
    "conv(64,3,stride=2) bn gelu res(3,act=gelu) conv(128,3,stride=2) bn gelu res(3,act=gelu) "
    "conv(256,3,stride=2) bn gelu res(3,act=gelu) dense(512) bn gelu"
)
# Shifts cut the training/test gap from 20 % to 5 % at code 64, which is what let more epochs pay.
_RES_RECIPE = {**_LONG_RECIPE, "augment": "flip+shift:1"}
register(
    Preset(
        "fmnist-32-res",
        f"{_RES} dense(32)",
        "best quality at code 32: the wide design with a residual block per stage, "
        "flips and shifts of up to one pixel, weight decay 0.05, all training images (no validation split), "
        "60 epochs; minutes on a GPU, two and three-quarter hours on a 2-core CPU",
        # Measured end to end on the CPU with shifts, seeds 0 and 1: 0.004980 and 0.004975 at 60 epochs;
        # seed 0: 0.00501 at 55, 0.00510 at 45; on the H200, 30 epochs, flips: 0.00538.
        {"epochs": 60, **_RES_RECIPE},
    )
)
register(
    Preset(
        "fmnist-16-res",
        f"{_RES} dense(16)",
        "best quality at code 16: fmnist-32-res's layers with a 16-d code, flips, 30 epochs; "
        "95 minutes on a 2-core CPU",
        {"epochs": 30, **_LONG_RECIPE},
    )
)
register(
    Preset(
        "fmnist-64-res",
        f"{_RES} dense(64)",
        "best quality at code 64: fmnist-32-res's layers and recipe with a 64-d code, weight decay 0.1 "
        "and 55 epochs; minutes on a GPU, two and a half hours on a 2-core CPU",
        # Measured end to end on the CPU, seeds 0 and 1: 0.003422 and 0.003433 at 55 epochs,
        # 0.003496 and 0.003502 at 45 (on the 0.0035 line), 0.00368 at 30 (flips alone 0.00374).
        {"epochs": 55, **_RES_RECIPE, "weight_decay": 0.1},
    )
)
register(
    Preset(
        "fmnist-32-probe",
        f"{_NARROW} dense(32)",
        "codes that separate classes: the default's layers with a contrastive term on two jittered crops "
        "of each image (weight 1), weight decay 0.01, all training images, 40 epochs; "
        "40 minutes on a 2-core CPU",
        # Measured on the CPU: probe 0.864 on its 32-d codes (reconstruction alone: 0.826-0.840), test MSE
        # 0.00956, 1.5x the default's (benchmarks/RESULTS.md).
        {
            "epochs": 100,
            **_RECIPE,
            "weight_decay": 0.01,
            "val_fraction": 0.0,
            "contrastive": 1.0,
            "contrastive_jitter": 1.0,
        },
    )
)
register(
    Preset(
        "fmnist-denoise",
        "conv(32,3) bn relu conv(64,3,stride=2) bn relu conv(64,3) bn relu",
        "denoising without a bottleneck: gaussian noise (sigma 0.3) in, the clean image out",
        {
            "epochs": 10,
            "batch_size": 128,
            "lr": 2e-3,
            "optimizer": "adamw",
            "schedule": "onecycle",
            "noise": "gaussian:0.3",
        },
    )
)
register(
    Preset(
        "keras-denoise",
        "conv(32,3) relu maxpool(2) conv(32,3) relu maxpool(2)",
        "the keras.io convolutional denoising example: conv/maxpool twice, mirrored",
        {"epochs": 10, "batch_size": 128, "lr": 1e-3, "optimizer": "adam", "schedule": "constant"},
    )
)
register(
    Preset(
        "small",
        "conv(16,3,stride=2) bn relu conv(32,3,stride=2) bn relu dense(16)",
        "a tiny model for smoke tests and small images",
        {"epochs": 5, "batch_size": 64, "lr": 2e-3, "optimizer": "adam", "schedule": "constant"},
    )
)
# After Bergmann et al. (2019), "Improving unsupervised defect segmentation by applying structural
# similarity to autoencoders" (AE-SSIM): strided 4x4 convolutions and the SSIM loss, but four of them to
# a 32x8x8 code at 128x128 rather than their nine to a one-pixel 100-d code. On the synthetic set their
# network, trained 50-100 epochs, gave pixel ROC-AUC 0.92-0.93 at 128x128 and 0.70 on 128-pixel patches
# of 256x256 images; this one 0.990 and 0.996 in 30 epochs (benchmarks/RESULTS.md, "Anomaly detection").
_AE_SSIM = (
    "conv(32,4,stride=2) relu conv(32,4,stride=2) relu conv(64,4,stride=2) relu conv(64,3,stride=2) relu conv(32,3)"
)
register(
    Preset(
        "ae-ssim",
        _AE_SSIM,
        "visual inspection by the residual alone (Bergmann et al.'s AE-SSIM, shortened): four strided "
        "convolutions (4x4 kernels) to a 32x8x8 code, trained on normal 128x128 images with the SSIM loss, "
        "30 epochs of batch 16; scored by the max of the residual map. Near chance on real photographs "
        "(benchmarks/RESULTS.md): use inspection",
        {"epochs": 30, "batch_size": 16, "lr": 2e-3, "optimizer": "adamw", "schedule": "onecycle", "loss": "ssim"},
    )
)
# DRAEM (Zavrtanik et al., 2021) small enough for a CPU: the reconstructive autoencoder restores the clean
# image from one with synthetic anomalies; a U-Net segments them from the input and its reconstruction.
_INSPECTION = (
    "conv(32,3,stride=2) bn relu conv(64,3,stride=2) bn relu conv(64,3,stride=2) bn relu conv(64,3,stride=2) bn relu"
)
# Its first block strides: full-resolution layers cost four times as much on a CPU (RESULTS.md).
_SEGMENTER = (
    "conv(16,3,stride=2) bn relu skip conv(32,3,stride=2) bn relu skip conv(64,3,stride=2) bn relu skip "
    "conv(64,3,stride=2) bn relu"
)
register(
    Preset(
        "inspection",
        _INSPECTION,
        "visual inspection of 128x128 images (DRAEM, no pretrained weights): an autoencoder learns to "
        "restore normal images from ones with synthetic anomalies (Perlin-noise regions filled from the "
        "images' own shuffled cells, other images, procedural textures or colours) and a U-Net segments the "
        "anomalies from the input and its reconstruction; the anomaly map is the U-Net's",
        {
            "segmenter": _SEGMENTER,
            "loss": "ssim+mse",
            "epochs": 100,
            "batch_size": 8,
            "lr": 2e-3,
            "optimizer": "adamw",
            "schedule": "onecycle",
        },
    )
)
