import subprocess
import sys

import numpy as np
import pytest
import torch

from convae.cli import main
from convae.run import load


def _onnx_matches(path, fn, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    want = fn(x).detach().numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize(
    "arch", ["conv(4,3,stride=2) relu maxpool(2) conv(6,4,stride=2)", "conv(4,3) avgpool(3) res(3) relu"]
)
def test_onnx_export_keeps_odd_sizes_exact(arch, tmp_path):
    import convae
    from convae.export import export

    model = convae.build(arch, (1, 9, 9)).eval()
    info = export(model, tmp_path / "ae.onnx")
    assert info["dynamic"] == ["batch", "spatial"]
    for shape in ((3, 1, 9, 9), (1, 1, 13, 10), (2, 1, 16, 17)):
        _onnx_matches(tmp_path / "ae.onnx", model, torch.rand(*shape))
    export(model, tmp_path / "dec.onnx", part="decoder")
    _onnx_matches(tmp_path / "dec.onnx", model.decode, torch.rand(4, *model.code_shape))


def test_export_cli_all_parts(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--part", "all", "--out", str(tmp_path / "m.onnx")]) == 0
    run = load(run_dir)
    x = torch.rand(5, 1, 8, 8)
    _onnx_matches(tmp_path / "m.autoencoder.onnx", run.model, x)
    _onnx_matches(tmp_path / "m.encoder.onnx", run.model.encode, x)
    _onnx_matches(tmp_path / "m.decoder.onnx", run.model.decode, torch.rand(3, 6))
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    assert torch.allclose(scripted(x), run.model(x), atol=1e-5)


def test_onnx_export_prints_only_what_it_wrote(run_dir, tmp_path):
    # A fresh process: PyTorch's exporter logs its warnings (torchvision ops it skips) once per process.
    out = tmp_path / "m.onnx"
    command = [sys.executable, "-m", "convae", "export", str(run_dir), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and out.exists(), result.stderr
    assert result.stderr == "" and result.stdout.startswith(f"autoencoder: {out}")
