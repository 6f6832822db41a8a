"""Export a trained run (autoencoder, encoder, decoder, or the whole anomaly scorer) to ONNX or TorchScript.

An export answers as the trained run does on raw inputs: data in its
original scale, as convae's loaders give it (images as floats in [0, 1],
shaped (N, C, H, W)). The normalisation is inside the graph, and so is its
inverse; the outputs are named (``reconstruction``, ``code``; with
``scores``: ``reconstruction``, ``anomaly_map``, ``score``, computed by
:mod:`convae.inference.scoring` as ``convae score`` computes them); the metadata say
what the graph expects and what its threshold is (ONNX ``metadata_props``,
TorchScript's ``convae.json`` extra file).

The batch size is dynamic in every export; ONNX exports of architectures
without dense layers also take any height and width, and restore odd sizes
exactly (the output padding of each transposed convolution is computed from
the input's shape inside the graph). A TorchScript trace holds the sizes it
was traced at, so a TorchScript export refuses any other sample shape with
an error that names both.

The scorer of a run trained on patches (``--crop``) takes images of one size,
given at export (``input_size``): the graph slides the windows over them and
blends the windows' outputs as ``convae score`` does, every window in one batch.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from convae import checkpoint
from convae.config import EXPORT_FORMATS, EXPORT_PARTS
from convae.data.preprocess import Normalizer
from convae.errors import ConvaeError
from convae.inference.scoring import SMOOTHING, Scorer
from convae.network.model import AutoEncoder

FORMATS, PARTS = EXPORT_FORMATS, EXPORT_PARTS
OUTPUTS = {
    "autoencoder": ["reconstruction"],
    "encoder": ["code"],
    "decoder": ["reconstruction"],
    "segmenter": ["anomaly_map"],
    "scorer": ["reconstruction", "anomaly_map", "score"],
}
WINDOWS_NEED_A_SIZE = (
    "this run trained on {window}-pixel patches (--crop) and scores larger images by sliding windows: "
    "give --input-size H,W, the size of the images the exported scorer will take"
)
LAYOUTS = {3: "N,C,L", 4: "N,C,H,W", 5: "N,C,D,H,W"}


class _AutoEncoder(nn.Module):
    def __init__(self, model: AutoEncoder, normalizer: Normalizer):
        super().__init__()
        self.model, self.normalizer = model, normalizer

    def forward(self, x: Tensor) -> Tensor:
        return self.normalizer.inverse(self.model(self.normalizer.transform(x)))


class _Encoder(_AutoEncoder):
    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode(self.normalizer.transform(x))


class _Decoder(_AutoEncoder):
    def forward(self, z: Tensor) -> Tensor:
        return self.normalizer.inverse(self.model.decode(z))


class _Segmenter(_AutoEncoder):
    """DRAEM's discriminative output alone: raw inputs -> the segmenter's anomaly probabilities (N, *spatial),
    before any smoothing."""

    def __init__(self, model: AutoEncoder, normalizer: Normalizer, segmenter: nn.Module):
        super().__init__(model, normalizer)
        self.segmenter = segmenter

    def forward(self, x: Tensor) -> Tensor:
        seen = self.normalizer.transform(x)
        return torch.sigmoid(self.segmenter(seen, self.model(seen)))[:, 0]


NO_SEGMENTER = (
    "this run has no segmenter (it was trained without --segmenter): --part segmenter exports DRAEM's "
    "discriminative network, which only such runs have"
)


class _Checked(nn.Module):
    """A traced module behind a check of the sample shape it was traced at (TorchScript)."""

    def __init__(self, traced: nn.Module, shape: list[int]):
        super().__init__()
        self.traced, self.shape = traced, shape

    def forward(self, x: Tensor):
        if list(x.shape[1:]) != self.shape:
            raise RuntimeError(f"convae export: takes samples shaped {self.shape}, got {list(x.shape[1:])}")
        return self.traced(x)


def _module(
    model: AutoEncoder, normalizer: Normalizer, part: str, scorer: Scorer | None, segmenter: nn.Module | None
) -> tuple[nn.Module, Tensor]:
    example = torch.rand(2, *model.input_shape)
    if scorer is not None:
        return scorer, example
    if part == "segmenter":
        if segmenter is None:
            raise ConvaeError(NO_SEGMENTER)
        return _Segmenter(model, normalizer, segmenter.eval().to("cpu")), example
    if part == "autoencoder":
        return _AutoEncoder(model, normalizer), example
    if part == "encoder":
        return _Encoder(model, normalizer), example
    if part == "decoder":
        return _Decoder(model, normalizer), torch.rand(2, *model.code_shape)
    raise ConvaeError(f"part must be one of {', '.join(PARTS)}, not {part!r}")


def export(
    model: AutoEncoder,
    path: str | Path,
    fmt: str = "onnx",
    part: str = "autoencoder",
    *,
    normalizer: Normalizer | None = None,
    scorer: Scorer | None = None,
    segmenter: nn.Module | None = None,
    metadata: dict[str, Any] | None = None,
    input_size: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Write ``part`` of ``model`` (with ``normalizer`` inside; none: inputs as the network takes them),
    or the whole ``scorer``, to ``path``; returns what was written, its outputs and which axes are dynamic.
    ``input_size``: the spatial size a windowed scorer (a run trained on patches) takes."""
    if fmt not in FORMATS:
        raise ConvaeError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    normalizer = normalizer or Normalizer("none")
    check_input_size(scorer.window if scorer is not None else None, input_size)
    if scorer is not None:
        scorer = copy.copy(scorer.eval().to("cpu"))  # the caller's scorer keeps taking windows in batches
        scorer.all_windows = True
        part = "scorer"
    module, example = _module(model, normalizer, part, scorer, segmenter)
    if input_size is not None:
        example = torch.rand(*example.shape[:2], *input_size)
    zca = normalizer.mode == "zca"  # a whitening matrix of the trained sample size
    windowed = scorer is not None and scorer.window is not None  # its windows are laid out for one size
    spatial_dynamic = part != "decoder" and not model.has_dense and not zca and fmt == "onnx" and not windowed
    names = OUTPUTS[part]
    meta = {
        **(metadata or {}),
        "part": part,
        "input": "code" if part == "decoder" else "input",
        "input_layout": "N,D" if part == "decoder" else LAYOUTS.get(example.dim(), "N,C,..."),
        "input_shape": list(example.shape[1:]),
        "outputs": names,
        **({"window": scorer.window[0]} if windowed else {}),
    }
    path = Path(path)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=False)
            scripted = torch.jit.script(_Checked(traced, list(example.shape[1:])))
        extra = {"convae.json": json.dumps(meta)}
        checkpoint.atomic_write(path, lambda f: torch.jit.save(scripted, f, _extra_files=extra))
    else:
        _export_onnx(module, example, path, spatial_dynamic, meta["input"], names, meta)
    dims = ["batch"] + (["spatial"] if spatial_dynamic else [])
    return {"path": str(path), "format": fmt, "part": part, "outputs": names, "dynamic": dims}


INPUT_SIZE_FOR_WINDOWS = (
    "--input-size is for the scorer (--scores) of a run trained on patches (--crop); "
    "other exports take the size the model does"
)


def check_input_size(window: tuple[int, ...] | None, input_size: tuple[int, ...] | None) -> None:
    """Refuse, in one line, an export whose image size is missing (a windowed scorer's), not needed
    (``window`` None: no scorer, or one of whole images) or too small."""
    if window is None:
        if input_size is not None:
            raise ConvaeError(INPUT_SIZE_FOR_WINDOWS)
        return
    if input_size is None:
        raise ConvaeError(WINDOWS_NEED_A_SIZE.format(window=window[0]))
    if len(input_size) != len(window) or any(s < w for s, w in zip(input_size, window)):
        shown = ",".join(map(str, input_size))
        raise ConvaeError(
            f"--input-size {shown}: the scorer takes {len(window)}-D images of at least the "
            f"{window[0]}-pixel patches the run trained on"
        )


def _export_onnx(
    module: nn.Module, example: Tensor, path: Path, spatial_dynamic: bool, input_name: str, names: list[str], meta: dict
) -> None:
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise ConvaeError("ONNX export needs the onnx and onnxscript packages: pip install 'convae[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    shapes = {0: batch}
    if spatial_dynamic:
        for axis in range(2, example.dim()):
            shapes[axis] = torch.export.Dim.AUTO
    # The exporter logs a warning per torchvision op it skips when torchvision is absent (convae never uses
    # them), and its IR one per empty attribute it builds (a windowed scorer's): neither is the user's to act on.
    exporter_logs = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [log.level for log in exporter_logs]
    try:
        for log in exporter_logs:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                dynamic_shapes=({**shapes},),
                input_names=[input_name],
                output_names=names,
                dynamo=True,
                verbose=False,
                external_data=False,
            )
    except Exception as err:  # the exporter raises many kinds; the first line says what failed
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConvaeError(f"this model cannot be exported to ONNX: {first[:300]}") from None
    finally:
        for log, level in zip(exporter_logs, levels):
            log.setLevel(level)
    proto = program.model_proto
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"convae.{key}", value if isinstance(value, str) else json.dumps(value)
    # The model exported; writing the file can still fail, and says so, not that the model is at fault.
    checkpoint.atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def export_run(
    run_dir: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    part: str = "autoencoder",
    *,
    scores: bool = False,
    metric: str | None = None,
    fpr: float = 0.05,
    sigmas: float | None = None,
    input_size: tuple[int, ...] | None = None,
) -> list[dict[str, Any]]:
    """Export a trained run: ``part`` (``all``: every part it has, as ``NAME.PART.EXT`` beside ``out``),
    or with ``scores`` the scorer, whose threshold is set as ``convae score`` sets it (``fpr`` on the
    run's validation data, or ``sigmas``: their mean plus that many standard deviations, for ``metric``;
    default: max for data with defect masks, else mse). A run trained on patches (``--crop``) exports
    a scorer of images of ``input_size`` (its spatial size), which slides the windows over them."""
    from convae.inference.anomaly import default_metric, record_threshold, threshold_for
    from convae.inference.run import load

    out = Path(out)
    if scores and part != "autoencoder":
        raise ConvaeError("--scores exports the whole scorer: give no --part")
    parts = list(PARTS) if part == "all" else [part]
    run = load(run_dir)
    if run.segmenter is None:
        if part == "segmenter":
            raise ConvaeError(NO_SEGMENTER)
        parts = [p for p in parts if p != "segmenter"]
    paths = {p: out if len(parts) == 1 else out.with_name(f"{out.stem}.{p}{out.suffix}") for p in parts}
    for path in paths.values():
        checkpoint.check_output(path)
    meta = run_metadata(run.config, run.normalizer)
    scorer = None
    if scores:
        if metric is None:  # the codes' scores are not in a graph: a one-class run exports its mse
            metric = default_metric(run.own_data(), run).replace("mse+knn", "mse")
        if "knn" in metric or "patch" in metric:
            compared = "patches" if "patch" in metric else "codes"
            raise ConvaeError(f"the {metric} score compares {compared} with the training set's; it is not exported")
        scorer = run.scorer(metric)
    check_input_size(scorer.window if scorer is not None else None, input_size)  # before the slow threshold
    if scorer is not None:
        threshold, key, record = threshold_for(run, metric, fpr, sigmas=sigmas)
        rule = {"sigmas": sigmas} if sigmas is not None else {"fpr": fpr}
        meta |= {"metric": metric, "threshold": threshold, **rule, "smoothing": SMOOTHING}
    written = [
        export(
            run.model,
            path,
            fmt,
            p,
            normalizer=run.normalizer,
            scorer=scorer,
            segmenter=run.segmenter,
            metadata=meta,
            input_size=input_size,
        )
        for p, path in paths.items()
    ]
    if scores:
        record_threshold(run, key, record)  # the run changes only once the export has succeeded
    return written


def run_metadata(config: Any, normalizer: Normalizer) -> dict[str, Any]:
    """What a user of an export needs to know of the run: its architecture and the inputs' range."""
    from convae import __version__
    from convae.config import arch_of

    arch = arch_of(config)
    if normalizer.mode == "unit":
        value_range: Any = [float(normalizer.state["low"]), float(normalizer.state["high"])]
    else:
        value_range = f"the training data's (normalize {normalizer.mode}, inside the graph)"
    return {
        "convae_version": __version__,
        "arch": arch if isinstance(arch, str) else json.dumps(arch),
        "data": config.data,
        "normalize": normalizer.mode,
        "value_range": value_range,
    }
