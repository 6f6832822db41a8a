"""Export a trained autoencoder (whole, encoder, decoder) to ONNX or TorchScript.

The batch size is dynamic in every export; ONNX exports of architectures
without dense layers also take any height and width, and the exported graph
restores odd sizes exactly (the output padding of each transposed convolution
is computed from the input's shape inside the graph).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from convae import checkpoint
from convae.config import EXPORT_FORMATS, EXPORT_PARTS
from convae.errors import ConvaeError
from convae.model import AutoEncoder

FORMATS, PARTS = EXPORT_FORMATS, EXPORT_PARTS


class _Encoder(nn.Module):
    def __init__(self, model: AutoEncoder):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode(x)


class _Decoder(nn.Module):
    def __init__(self, model: AutoEncoder):
        super().__init__()
        self.model = model

    def forward(self, z: Tensor) -> Tensor:
        return self.model.decode(z)


def _module(model: AutoEncoder, part: str) -> tuple[nn.Module, Tensor]:
    example = torch.rand(2, *model.input_shape)
    if part == "autoencoder":
        return model, example
    if part == "encoder":
        return _Encoder(model), example
    if part == "decoder":
        return _Decoder(model), torch.rand(2, *model.code_shape)
    raise ConvaeError(f"part must be one of {', '.join(PARTS)}, not {part!r}")


def export(model: AutoEncoder, path: str | Path, fmt: str = "onnx", part: str = "autoencoder") -> dict:
    """Write ``part`` of ``model`` to ``path``; returns what was written and which axes are dynamic."""
    if fmt not in FORMATS:
        raise ConvaeError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    module, example = _module(model, part)
    spatial_dynamic = part != "decoder" and not model.has_dense and fmt == "onnx"
    path = Path(path)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=False)
        checkpoint.atomic_write(path, lambda f: torch.jit.save(traced, f))
    else:
        _export_onnx(module, example, path, spatial_dynamic)
    dims = ["batch"] + (["spatial"] if spatial_dynamic else [])
    return {"path": str(path), "format": fmt, "part": part, "dynamic": dims}


def _export_onnx(module: nn.Module, example: Tensor, path: Path, spatial_dynamic: bool) -> None:
    try:
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise ConvaeError("ONNX export needs the onnx and onnxscript packages: pip install 'convae[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    shapes = {0: batch}
    if spatial_dynamic:
        for axis in range(2, example.dim()):
            shapes[axis] = torch.export.Dim.AUTO
    # The exporter logs a warning per torchvision op it skips when torchvision is absent (convae never uses them).
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    try:
        exporter_log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), dynamic_shapes=({**shapes},), dynamo=True, verbose=False, external_data=False
            )
    except Exception as err:  # the exporter raises many kinds; the first line says what failed
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConvaeError(f"this model cannot be exported to ONNX: {first[:300]}") from None
    finally:
        exporter_log.setLevel(level)
    # The model exported; writing the file can still fail, and says so, not that the model is at fault.
    checkpoint.atomic_write(path, lambda f: f.write(program.model_proto.SerializeToString()))
