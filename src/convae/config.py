"""Every setting of a training run, declared once: type, default, help, allowed values.

The command line's flags, their help and their defaults are generated from
these fields (:mod:`convae.cli`), config files name the same keys, and the
library takes them as keyword arguments, so the three cannot disagree. No torch
here: ``convae train --help`` and config checks stay instant.

Each concern is a dataclass of its own (data, model, objective, optimisation,
runtime, logging); :class:`TrainConfig` is all of them at once, flat, the way
flags and config files name them (``batch_size``, not ``optim.batch_size``).

Where a setting comes from, later wins: the defaults below (which are the
default preset's recipe), then the preset named by ``arch``, then a config
file, then flags or keyword arguments. :func:`resolve_config` is the one place
that merges them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convae import presets
from convae.errors import ConvaeError
from convae.network.spec import OUTPUTS, UPSAMPLE
from convae.parsers import COMPILE_MODES, Augment, Noise, parse_compile, parse_image_size, parse_int_list, parse_sources

LOSSES = ("mse", "bce", "l1", "ssim", "ssim+l1", "ssim+mse")
NORMALIZE = ("none", "unit", "standardize", "zca")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
CONFIG_SUFFIXES = (".toml", ".json")
PLACEMENTS = ("auto", "device", "host", "stream")
INT64_MAX = 2**63 - 1
EXPORT_FORMATS = ("onnx", "torchscript")  # `convae export`: the file formats and the parts of a model
EXPORT_PARTS = ("autoencoder", "encoder", "decoder", "segmenter")
# `convae score`'s image scores: of the reconstruction (scoring), of the code (knn), of both (anomaly)
SCORE_METRICS = ("mse", "l1", "ssim", "max", "knn", "mse+knn", "max+patch")


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    bounds: str | None = None,
    default_text: str | None = None,
    metavar: str | None = None,
    parse: typing.Callable[[str], Any] | None = None,
    internal: bool = False,
) -> Any:
    """A field with what the CLI and the checks need to know of it.

    ``bounds`` is an interval such as ``"(0, 1]"`` or ``"[1, inf)"``;
    ``default_text`` replaces the default in the help where the default is a
    rule (``None`` meaning "decided from the data or the device");
    ``parse`` turns a flag's text into the value; ``internal`` settings are
    recorded by the trainer, never given by the user.
    """
    meta = {"help": help, "choices": choices, "bounds": bounds, "default_text": default_text}
    meta |= {"metavar": metavar, "parse": parse, "internal": internal}
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- the settings, by concern


@dataclass
class DataSettings:
    """data: what to train on and how it is prepared"""

    data: str = setting("fashion-mnist", "fashion-mnist, mnist, digits, folder:PATH, npy:PATH or mvtec:PATH")
    data_dir: str | None = setting(None, "where to look for dataset files first")
    channels: int | None = setting(None, "folder images: 1 (grayscale) or 3 (RGB)", choices=(1, 3))
    image_size: list[int] | None = setting(
        None, "folder images: resize and centre-crop to H,W", parse=parse_image_size, metavar="H,W"
    )
    crop: int | None = setting(
        None,
        "train on random N-sided patches of each sample; larger inputs are then reconstructed and scored "
        "by overlapping N-sided sliding windows, blended",
        bounds="[1, inf)",
        metavar="N",
    )
    spatial_dims: int | None = setting(
        None,
        "arrays: samples are (N, C, *spatial) with 1 (signals), 2 (images) or 3 (volumes) spatial axes",
        choices=(1, 2, 3),
        default_text="image rules: (N, H, W), (N, C, H, W) or (N, H, W, C)",
    )
    val_fraction: float = setting(
        0.1, "held-out share for validation (0: training images are monitored instead)", bounds="[0, 1)"
    )
    test_fraction: float = setting(
        0.1,
        "sources without a test split: seeded held-out share for testing (eval, score), never trained on",
        bounds="[0, 1)",
    )
    val_samples: int = setting(
        10_000,
        "validation samples evaluated each epoch (and held-out test samples at the end), evenly spread (0: all)",
        bounds="[0, inf)",
    )
    cache_dir: str | None = setting(
        None,
        "folder images: where the decoded, resized images are cached ('none': decode each time)",
        default_text="$CONVAE_CACHE or ~/.cache/convae",
    )
    source_stamp: str | None = setting(None, "", internal=True)  # what the data was: resuming checks it
    normalize: str = setting("unit", "input preparation, inverted for output", choices=NORMALIZE)
    zca_epsilon: float = setting(1e-2, "ZCA whitening epsilon", bounds="(0, inf)")
    noise: str | None = setting(None, "denoising: gaussian:0.3, masking:0.25 or saltpepper:0.1")
    augment: str | None = setting(None, "training-time augmentation: flip, shift:N or flip+shift:N")
    exclude_classes: list[int] | None = setting(
        None, "labels left out of training, e.g. 0 or 1,7 (anomaly detection)", parse=parse_int_list, metavar="K,..."
    )
    normal_class: int | None = setting(
        None,
        "one-class protocol: train on this label only; `score` counts every other class as anomalous",
        bounds="[0, inf)",
        metavar="K",
    )


@dataclass
class ModelSettings:
    """model: the encoder and how the decoder mirrors it"""

    arch: str | list = setting(presets.DEFAULT_PRESET, "preset name or architecture string (see `convae presets`)")
    output: str | None = setting(
        None, "output activation", choices=OUTPUTS, default_text="sigmoid for --normalize unit, else identity"
    )
    tied: bool = setting(False, "decoder reuses the encoder's weights, transposed")
    upsample: str = setting("transpose", "transposed conv, or resize then conv", choices=UPSAMPLE)


@dataclass
class ObjectiveSettings:
    """objective: what the loss asks of the network"""

    loss: str = setting(
        "mse", "reconstruction loss (ssim: 1 - SSIM over 11-pixel windows, as Bergmann et al.)", choices=LOSSES
    )
    # SimCLR's NT-Xent on the codes of two crops of each image, encoded beside the image, not reconstructed.
    contrastive: float = setting(
        0.0, "weight of a contrastive term on the codes of two crops (0: off)", bounds="[0, inf)"
    )
    contrastive_crop: float = setting(
        0.3, "smallest crop of the contrastive views, a share of the area", bounds="(0, 1]"
    )
    contrastive_jitter: float = setting(1.0, "brightness and contrast jitter of the contrastive views", bounds="[0, 1]")
    contrastive_head: int = setting(64, "output size of the contrastive projection head", bounds="[1, inf)")
    contrastive_tau: float = setting(0.5, "temperature of the contrastive term", bounds="(0, inf)")
    # DRAEM: a U-Net segments synthetic anomalies from the input and its reconstruction (convae.data.anomalies).
    segmenter: str | None = setting(
        None,
        "architecture of a U-Net trained to segment synthetic anomalies from the input and its reconstruction "
        "(DRAEM); the autoencoder learns to restore the clean image (2-D images)",
        metavar="ARCH",
    )
    anomaly_sources: str = setting(
        "shuffle+patch+texture+colour",
        "what fills the synthetic anomalies, some of shuffle, patch, texture, colour, tone, rescaled joined by + "
        "(with --segmenter)",
    )
    anomaly_fraction: float = setting(0.5, "share of training images given a synthetic anomaly", bounds="(0, 1]")


@dataclass
class OptimSettings:
    """optimisation: how long and how fast"""

    optimizer: str = setting("adamw", "optimizer", choices=OPTIMIZERS)
    lr: float = setting(2e-3, "learning rate (the peak rate for onecycle)", bounds="(0, inf)")
    weight_decay: float = setting(0.0, "weight decay", bounds="[0, inf)")
    schedule: str = setting("onecycle", "learning-rate schedule", choices=SCHEDULES)
    epochs: int = setting(15, "epochs (with --resume: train a run on to this many)", bounds="[1, inf)")
    max_steps: int | None = setting(
        None, "stop after this many optimizer steps (the epoch in progress ends there)", bounds="[1, inf)"
    )
    batch_size: int = setting(128, "global batch size (split over torchrun's processes)", bounds="[1, inf)")
    clip_grad: float | None = setting(None, "clip the gradient norm to this value", bounds="(0, inf)")
    patience: int | None = setting(None, "early stopping: epochs without validation improvement", bounds="[1, inf)")
    seed: int = setting(0, "random seed (split, initial weights, batches)", bounds="[0, inf)")
    # The step at which the learning-rate schedule began: 0, or where --resume --epochs re-planned it.
    schedule_start: int = setting(0, "", internal=True)


@dataclass
class RuntimeSettings:
    """runtime: where and how the steps run (results do not depend on these, speed does)"""

    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    channels_last: bool | None = setting(None, "channels-last memory layout", default_text="on for images")
    amp: bool | None = setting(
        None, "bf16 autocast", default_text="on where bf16 is native: CUDA GPUs, AVX512-BF16/AMX CPUs"
    )
    compile: bool | str | None = setting(
        None,
        f"torch.compile the step: true, false or one of {', '.join(COMPILE_MODES)}",
        parse=parse_compile,
        metavar="MODE",
        default_text="reduce-overhead on one CUDA GPU, else false",
    )
    sync_bn: bool = setting(False, "with torchrun on GPUs: batch-norm statistics over all processes")
    threads: int | None = setting(None, "CPU threads for PyTorch", bounds="[1, inf)", default_text="PyTorch's")
    placement: str = setting(
        "auto",
        "where the training data lives: on the device, in host memory, or streamed from its file by DataLoader "
        "workers (auto: the device or host memory when it fits, else streamed)",
        choices=PLACEMENTS,
    )
    workers: int | None = setting(
        None,
        "DataLoader processes reading batches when streaming (0: the training process)",
        bounds="[0, 64]",
        default_text="a quarter of the CPU cores, 1 to 4",
    )


@dataclass
class LogSettings:
    """logging: what the run directory and the terminal receive"""

    out: str | None = setting(None, "run directory", default_text="runs/DATA-ARCH-TIME")
    quiet: bool = setting(False, "no progress bar or epoch lines")
    image_every: int = setting(0, "epochs between image summaries (0: about four per run)", bounds="[0, inf)")
    histograms: bool = setting(True, "weight, gradient and activation histograms in TensorBoard")
    embedding_samples: int = setting(500, "validation codes shown in TensorBoard's projector", bounds="[0, inf)")


SECTIONS = (DataSettings, ModelSettings, ObjectiveSettings, OptimSettings, RuntimeSettings, LogSettings)


@dataclass
class TrainConfig(LogSettings, RuntimeSettings, OptimSettings, ObjectiveSettings, ModelSettings, DataSettings):
    """Every setting of a run. Saved as ``config.json`` in the run directory and inside checkpoints.

    ``TrainConfig()`` is the default preset with its recipe; for another preset
    use :func:`resolve_config` (or :func:`convae.fit`), which applies its recipe.
    """

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            check_field(f, getattr(self, f.name))
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConvaeError(f"image_size must be two positive integers H, W, not {self.image_size}")
        if isinstance(self.compile, str) and self.compile not in COMPILE_MODES:
            raise ConvaeError(f"compile must be true, false or one of {', '.join(COMPILE_MODES)}, not {self.compile!r}")
        if self.loss == "bce" and self.normalize != "unit":
            raise ConvaeError("loss bce needs data in [0, 1]: use it with normalize unit")
        if self.normal_class is not None and self.exclude_classes:
            raise ConvaeError("give --normal-class or --exclude-classes, not both")
        if self.loss.startswith("ssim") and self.normalize != "unit":
            raise ConvaeError(f"loss {self.loss} compares images in [0, 1]: use it with normalize unit")
        if self.loss.startswith("ssim") and self.spatial_dims not in (None, 2):
            raise ConvaeError(
                f"loss {self.loss} is for images (2 spatial axes), not --spatial-dims {self.spatial_dims}"
            )
        if self.crop is not None and self.normalize == "zca":
            raise ConvaeError("--crop trains on patches; zca whitens whole samples: use normalize unit or standardize")
        Noise.parse(self.noise)
        parse_sources(self.anomaly_sources)
        if self.segmenter is not None:
            from convae.network.spec import parse, to_blocks  # torch-free, as the grammar is

            to_blocks(parse(self.segmenter))
            if self.spatial_dims not in (None, 2):
                raise ConvaeError(f"--segmenter segments 2-D images, not data of --spatial-dims {self.spatial_dims}")
            if self.contrastive:
                raise ConvaeError("give --segmenter or --contrastive, not both")
        Augment.parse(self.augment)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrainConfig:
        """A run's config as it was saved; a setting added since takes the value that reproduces what
        the run did then (runs saved before ``test_fraction`` held out no test split)."""
        return cls(**{"test_fraction": 0.0, **saved})


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
USER_FIELDS = [name for name, f in FIELDS.items() if not f.metadata["internal"]]


def section_of(name: str) -> type:
    return next(s for s in SECTIONS if name in {f.name for f in dataclasses.fields(s)})


# ----------------------------------------------------------------------------- checks


def _interval(bounds: str) -> tuple[float, float, bool, bool]:
    low, high = (float(v) for v in bounds[1:-1].split(","))
    return low, high, bounds[0] == "[", bounds[-1] == "]"


def describe_bounds(bounds: str, kind: type) -> str:
    low, high, closed_low, _ = _interval(bounds)
    if high == math.inf:
        if kind is int and low == 1:
            return "a positive integer"
        if kind is int and low == 0:
            return "an integer >= 0"
        return "positive" if (low == 0 and not closed_low) else f">= {low:g}" if closed_low else f"> {low:g}"
    return f"in {bounds}"


def check_field(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if value is None:
        return
    if meta["choices"] is not None and value not in meta["choices"]:
        options = ", ".join(map(str, meta["choices"]))
        raise ConvaeError(f"{f.name} must be one of {options}, not {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        raise ConvaeError(f"{f.name} must be at most {INT64_MAX:,}, not {value}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConvaeError(f"{f.name} must be a finite number, not {value}")
    if meta["bounds"] is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high, closed_low, closed_high = _interval(meta["bounds"])
        inside = (value >= low if closed_low else value > low) and (value <= high if closed_high else value < high)
        if not inside:
            kind = int if isinstance(value, int) else float
            raise ConvaeError(f"{f.name} must be {describe_bounds(meta['bounds'], kind)}, not {value!r}")


def check_type(key: str, value: Any) -> Any:
    """A setting from a file, a flag or a keyword, checked against its field's type."""
    hint = typing.get_type_hints(TrainConfig)[key]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _union_type()) else (hint,)
    if value is None and type(None) in allowed:
        return value
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    for kind in allowed:
        origin = typing.get_origin(kind) or kind
        if origin is type(None):
            continue
        if isinstance(value, origin) and not (origin is int and isinstance(value, bool)):
            ints = typing.get_args(kind) == (int,)
            if origin is list and ints and not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                break
            return list(value) if origin is list else value
    names = " or ".join(_type_name(k) for k in allowed)
    raise ConvaeError(f"setting {key}: expected {names}, got {value!r}")


def _union_type() -> Any:
    import types

    return getattr(types, "UnionType", typing.Union)


def _type_name(kind: Any) -> str:
    if kind is type(None):
        return "nothing"
    if typing.get_origin(kind) is list:
        inner = typing.get_args(kind)
        return f"a list of {inner[0].__name__}" if inner else "a list"
    return getattr(kind, "__name__", str(kind))


# ----------------------------------------------------------------------------- merging


def resolve_config(settings: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the preset's recipe, then the user's ``settings`` (file and flags); checked."""
    settings = {k.replace("-", "_"): v for k, v in (settings or {}).items()}
    unknown = sorted(set(settings) - set(USER_FIELDS))
    if unknown:
        raise ConvaeError(f"unknown setting(s): {', '.join(unknown)} (settings: {', '.join(sorted(USER_FIELDS))})")
    settings = {key: check_type(key, value) for key, value in settings.items()}
    arch = settings.get("arch", TrainConfig.arch)
    recipe = presets.get(arch).train if presets.is_preset(arch) else {}
    config = TrainConfig(**{**recipe, **settings})
    config.validate()
    return config


def arch_of(config: TrainConfig) -> str | list:
    """The architecture string of a config (a preset name resolved)."""
    return presets.resolve(config.arch)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML or JSON file: keys are :class:`TrainConfig` fields, at the top or in ``[train]``."""
    path = Path(path)
    if path.suffix not in CONFIG_SUFFIXES:
        raise ConvaeError(f"{path}: config files are TOML (.toml) or JSON (.json), not '{path.suffix or path.name}'")
    if not path.is_file():
        raise ConvaeError(f"{path}: no such config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConvaeError(f"{path}: not UTF-8 text (byte {err.start})") from None
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
        raise ConvaeError(f"{path}: cannot parse ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConvaeError(f"{path}: expected a table of settings, got {type(data).__name__}")
    if "train" in data:
        if not isinstance(data["train"], dict):
            raise ConvaeError(f"{path}: 'train' must be a table of settings, not {data['train']!r}")
        others = sorted(set(data) - {"train"})
        if others:
            raise ConvaeError(f"{path}: settings both in [train] and outside it ({', '.join(others)}): use one")
        data = data["train"]
    tables = sorted(k for k, v in data.items() if isinstance(v, dict))
    if tables:
        raise ConvaeError(f"{path}: unknown table(s) {', '.join(tables)} (settings go at the top or in [train])")
    return data


def settings_markdown() -> str:
    """docs/settings.md: every setting by concern, with its default, from the fields themselves.

    ``python3 -m convae.config > docs/settings.md`` rewrites it; a test checks it is current.
    """
    out = [
        "# Every training setting",
        "",
        "Generated from `convae.config` by `python3 -m convae.config > docs/settings.md`; the same fields make "
        "`convae train`'s flags (`--batch-size`), the keys of a `--config` file (`batch_size`) and the keywords "
        "of `convae.fit` and `TrainConfig`. Defaults are the default preset's recipe; a preset given with "
        "`arch` brings its own recipe (`convae presets`), and what you set wins over both.",
    ]
    for section in SECTIONS:
        title, _, _ = section.__doc__.strip().partition(":")
        out += ["", f"## {title}", "", section.__doc__.strip().partition(": ")[2].capitalize() + ".", ""]
        out += ["| setting | flag | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(section):
            meta = f.metadata
            if meta["internal"]:
                continue
            default = meta["default_text"] or ("—" if f.default is None else json.dumps(f.default))
            extra = f" One of {', '.join(f'`{c}`' for c in meta['choices'])}." if meta["choices"] else ""
            if meta["bounds"]:
                extra += f" Range {meta['bounds']}."
            flag = "--" + f.name.replace("_", "-")
            out.append(f"| `{f.name}` | `{flag}` | {default} | {meta['help']}.{extra} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(settings_markdown(), end="")


__all__ = ["TrainConfig", "arch_of", "load_config_file", "resolve_config"]
