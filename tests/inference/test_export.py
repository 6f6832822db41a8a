import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from convae.cli import main
from convae.inference.run import load


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
    from convae.inference.export import export

    model = convae.build(arch, (1, 9, 9)).eval()
    info = export(model, tmp_path / "ae.onnx")
    assert info["dynamic"] == ["batch", "spatial"]
    for shape in ((3, 1, 9, 9), (1, 1, 13, 10), (2, 1, 16, 17)):
        _onnx_matches(tmp_path / "ae.onnx", model, torch.rand(*shape))
    export(model, tmp_path / "dec.onnx", part="decoder")
    _onnx_matches(tmp_path / "dec.onnx", model.decode, torch.rand(4, *model.code_shape))


def test_export_cli_all_parts_take_raw_inputs(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--part", "all", "--out", str(tmp_path / "m.onnx")]) == 0
    run = load(run_dir)
    # Data outside [0, 1] tells whether the graph scales it as the run does (unit: the data's min and max).
    x = torch.rand(5, 1, 8, 8) * 3 - 1
    _onnx_matches(tmp_path / "m.autoencoder.onnx", run.reconstruct, x)
    _onnx_matches(tmp_path / "m.encoder.onnx", run.encode, x)
    _onnx_matches(tmp_path / "m.decoder.onnx", run.decode, torch.rand(3, 6))
    assert main(["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    extra = {"convae.json": ""}
    scripted = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert torch.allclose(scripted(x), run.reconstruct(x), atol=1e-5)
    meta = json.loads(extra["convae.json"])
    assert meta["input_shape"] == [1, 8, 8] and meta["outputs"] == ["reconstruction"] and meta["normalize"] == "unit"


def test_onnx_outputs_are_named_and_the_metadata_describes_the_inputs(run_dir, tmp_path):
    import onnx
    import onnxruntime as ort

    assert main(["export", str(run_dir), "--part", "encoder", "--out", str(tmp_path / "e.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "e.onnx"))
    assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["code"]
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "e.onnx")).metadata_props}
    run = load(run_dir)
    assert meta["convae.arch"] == "conv(8,3,stride=2) bn relu dense(6)"
    assert meta["convae.input_layout"] == "N,C,H,W" and json.loads(meta["convae.input_shape"]) == [1, 8, 8]
    low, high = json.loads(meta["convae.value_range"])
    assert (low, high) == (float(run.normalizer.state["low"]), float(run.normalizer.state["high"]))


@pytest.fixture(scope="module")
def standardized_run(tmp_path_factory):
    """A fully convolutional run on standardized data: the graph's normalisation is not close to identity."""
    from helpers import write_npz

    from convae.config import resolve_config
    from convae.training.train import train

    tmp = tmp_path_factory.mktemp("scorer")
    config = resolve_config(
        dict(
            data=f"npy:{write_npz(tmp / 'd.npz', n=120)}",
            arch="conv(8,3,stride=2) bn relu conv(8,3,stride=2)",
            normalize="standardize",
            epochs=2,
            batch_size=16,
        )
    )
    config.out, config.quiet, config.histograms = str(tmp / "run"), True, False
    train(config)
    return tmp / "run"


@pytest.mark.parametrize("metric", ["max", "mse", "ssim"])
def test_exported_scorer_gives_the_numbers_of_convae_score(standardized_run, tmp_path, metric, capsys):
    import onnx
    import onnxruntime as ort

    from convae.inference.anomaly import anomaly_scores
    from convae.inference.run import dataset_split

    out = tmp_path / "scorer.onnx"
    assert main(["export", str(standardized_run), "--scores", "--metric", metric, "--out", str(out)]) == 0
    assert main(["score", str(standardized_run), "--metric", metric, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after export's line
    run = load(standardized_run)
    x, _, _ = dataset_split(run, None, "test")
    scores, maps = anomaly_scores(run, x, metric)
    session = ort.InferenceSession(str(out))
    assert [o.name for o in session.get_outputs()] == ["reconstruction", "anomaly_map", "score"]
    reconstruction, anomaly_map, score = session.run(None, {"input": x})
    assert np.abs(score - scores).max() < 1e-5 and np.abs(anomaly_map - maps).max() < 1e-5
    assert np.abs(reconstruction - run.reconstruct(x)).max() < 1e-5
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert float(meta["convae.threshold"]) == printed["threshold"] and meta["convae.metric"] == metric
    assert printed["flagged"] == int((score > printed["threshold"]).sum())
    # the same graph at another size (the architecture has no dense layer)
    bigger = np.random.default_rng(0).random((2, 1, 13, 11), dtype=np.float32)
    got = session.run(None, {"input": bigger})[2]
    assert np.abs(got - anomaly_scores(run, bigger, metric)[0]).max() < 1e-5
    saved = json.loads((standardized_run / "thresholds.json").read_text())
    assert saved[f"{metric} fpr=0.05"]["threshold"] == printed["threshold"]


def test_torchscript_refuses_sizes_other_than_it_was_traced_at(tmp_path):
    import convae
    from convae.inference.export import export

    for arch, shape, other in (
        ("conv(4,3,stride=2) relu conv(4,3,stride=2)", (1, 101), (1, 77)),
        ("conv(4,3) relu maxpool(2)", (1, 13, 9), (1, 12, 8)),
    ):
        model = convae.build(arch, shape).eval()
        export(model, tmp_path / "m.pt", "torchscript")
        scripted = torch.jit.load(str(tmp_path / "m.pt"))
        x = torch.rand(3, *shape)
        assert torch.allclose(scripted(x), model(x), atol=1e-6)
        with pytest.raises(Exception, match=r"takes samples shaped \[1, .*\], got \[1, "):
            scripted(torch.rand(2, *other))


def test_the_scorer_of_a_patch_run_exports_for_one_image_size_and_slides_the_windows_in_the_graph(tmp_path, capsys):
    import onnx
    import onnxruntime as ort
    from helpers import train_inspection_run

    from convae.inference.anomaly import anomaly_scores
    from convae.inference.run import dataset_split

    arch, layout = (
        "conv(8,3,stride=2) relu conv(8,3,stride=2) relu",
        dict(normal=12, test_normal=2, per_defect=1, size=32),
    )
    segmenter = "conv(8,3,stride=2) bn relu skip conv(8,3,stride=2) bn relu"  # DRAEM on patches, as on large photos
    flags = ("--epochs", "1", "--batch-size", "8", "--crop", "16", "--segmenter", segmenter)
    run_dir = train_inspection_run(tmp_path, arch, *flags, **layout)
    out = tmp_path / "s.onnx"
    for flags, message in (
        (["--scores"], "trained on 16-pixel patches (--crop) and scores larger images by sliding windows: give"),
        (["--scores", "--input-size", "12,40"], "--input-size 12,40: the scorer takes 2-D images of at least the 16"),
        (["--scores", "--input-size", "32"], "--input-size 32: the scorer takes 2-D images"),
        (["--input-size", "32,32"], "--input-size is for the scorer (--scores) of a run trained on patches"),
        (["--scores", "--part", "encoder"], "--scores exports the whole scorer"),
    ):
        assert main(["export", str(run_dir), *flags, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and not out.exists(), err
    assert main(["export", str(run_dir), "--scores", "--input-size", "32,32", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "dynamic: batch)" in printed.out  # the windows are laid out for 32x32
    assert all(line.startswith("warning: ") for line in printed.err.splitlines())  # convae's, not the exporter's
    run = load(run_dir)
    x, _, _ = dataset_split(run, None, "test")  # 32x32: 3x3 windows of 16, overlapping by half
    scores, maps = anomaly_scores(run, x, "max")
    session = ort.InferenceSession(str(out))
    reconstruction, anomaly_map, score = session.run(None, {"input": x})
    assert np.abs(score - scores).max() < 1e-5 and np.abs(anomaly_map - maps).max() < 1e-5
    assert np.abs(reconstruction - run.reconstruct(x)).max() < 1e-5
    one = session.run(None, {"input": x[:1]})[2]  # the batch stays dynamic
    assert np.abs(one - scores[:1]).max() < 1e-5
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["convae.window"] == "16" and json.loads(meta["convae.input_shape"])[1:] == [32, 32]


def test_onnx_export_prints_only_what_it_wrote(run_dir, tmp_path):
    # A fresh process: PyTorch's exporter logs its warnings (torchvision ops it skips) once per process.
    out = tmp_path / "m.onnx"
    command = [sys.executable, "-m", "convae", "export", str(run_dir), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and out.exists(), result.stderr
    assert result.stderr == "" and result.stdout.startswith(f"autoencoder: {out}")
