"""A DRAEM run (--segmenter) end to end: trained on synthetic anomalies, scored by its segmenter's map,
exported with both networks in one graph, refused where it cannot apply."""

import json

import numpy as np
import pytest
from helpers import train_inspection_run

from convae.cli import main

RECON = "conv(8,3,stride=2) bn relu conv(8,3,stride=2) bn relu"
UNET = "conv(8,3,stride=2) bn relu skip conv(8,3,stride=2) bn relu"
LAYOUT = dict(normal=16, test_normal=3, per_defect=2, size=32)


@pytest.fixture(scope="module")
def draem_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("draem")
    flags = ["--segmenter", UNET, "--loss", "ssim+mse", "--epochs", "2", "--batch-size", "8", "--image-every", "1"]
    return train_inspection_run(tmp, RECON, *flags, **LAYOUT)


def test_the_run_keeps_its_segmenter_and_scores_with_its_map(draem_run, capsys):
    import torch

    import convae
    from convae.inference.run import dataset_split

    run = convae.load(draem_run)
    assert run.segmenter is not None and not run.segmenter.training
    metrics = json.loads((draem_run / "metrics.json").read_text())
    assert all(m["train_segmentation"] > 0 for m in metrics)  # the focal term, logged beside the loss
    capsys.readouterr()
    assert main(["score", str(draem_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "max" and set(result["per_type"]) == {"hole", "scratch", "stain"}
    # the map is the segmenter's probability of an anomaly, smoothed: in [0, 1]
    x, _, _ = dataset_split(run, None, "test")
    with torch.no_grad():
        _, maps, scores = run.scorer("max")(torch.as_tensor(x))
        seen = run.normalizer.transform(torch.as_tensor(x))
        raw = torch.sigmoid(run.segmenter(seen, run.model(seen)))[:, 0]
    from convae.inference.scoring import smooth

    assert torch.allclose(maps, smooth(raw), atol=1e-6) and maps.min() >= 0 and maps.max() <= 1
    assert torch.allclose(scores, raw.flatten(1).amax(1))  # the peak before smoothing


def test_tensorboard_shows_the_synthetic_anomalies_and_what_the_networks_made_of_them(draem_run):
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for path in glob.glob(f"{draem_run}/events.out.tfevents.*"):
        acc = EventAccumulator(path, size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"]) | set(acc.Tags()["scalars"])
    expected = {"synthetic/input", "synthetic/mask", "synthetic/reconstruction", "synthetic/predicted_map"}
    assert expected <= tags and {"loss/train", "loss/train_segmentation"} <= tags


def test_the_exported_scorer_holds_both_networks_and_gives_scores_numbers(draem_run, tmp_path, capsys):
    import onnxruntime as ort

    import convae
    from convae.inference.anomaly import anomaly_scores
    from convae.inference.run import dataset_split

    out = tmp_path / "scorer.onnx"
    assert main(["export", str(draem_run), "--scores", "--out", str(out)]) == 0
    run = convae.load(draem_run)
    x, _, _ = dataset_split(run, None, "test")
    scores, maps = anomaly_scores(run, x, "max")
    session = ort.InferenceSession(str(out))
    _, anomaly_map, score = session.run(None, {"input": x})
    assert np.abs(score - scores).max() < 1e-5 and np.abs(anomaly_map - maps).max() < 1e-5
    seg = tmp_path / "segmenter.onnx"
    assert main(["export", str(draem_run), "--part", "segmenter", "--out", str(seg)]) == 0
    probabilities = ort.InferenceSession(str(seg)).run(None, {"input": x})[0]
    assert probabilities.shape == (len(x), 32, 32) and probabilities.min() >= 0 and probabilities.max() <= 1


def test_segmenter_exports_and_settings_that_cannot_apply_are_one_line_refusals(run_dir, tmp_path, capsys):
    out = tmp_path / "seg.onnx"
    assert main(["export", str(run_dir), "--part", "segmenter", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no segmenter" in err and not out.exists()
    data = ["train", "--data", "digits", "--arch", RECON, "--out", str(tmp_path / "r")]
    for flags, message in (
        (["--segmenter", "conv(4,3) skip conv(4,3,stride=2) dense(4)"], "cannot line up across the dense layer"),
        (["--segmenter", UNET, "--anomaly-sources", "colour+glitter"], "anomaly sources 'colour+glitter'"),
        (["--segmenter", UNET, "--spatial-dims", "1"], "segments 2-D images"),
    ):
        assert main([*data, *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "r").exists()


def test_max_plus_patch_adds_the_patch_distances_in_units_of_their_spread_on_normal_images(draem_run, capsys):
    import convae
    from convae.inference.anomaly import anomaly_scores
    from convae.inference.patches import patch_maps, patch_memory, scales_for
    from convae.inference.run import dataset_split

    capsys.readouterr()
    assert main(["score", str(draem_run), "--metric", "max+patch", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "max+patch" and {"pixel_auroc", "aupro", "image_auroc"} <= set(result)
    run = convae.load(draem_run)
    x_val, _, _ = dataset_split(run, None, "val")
    fused_val, maps_val = anomaly_scores(run, x_val, "max+patch")
    # each term is a z-score on the validation images: their sum has mean 0 there, pixels as images
    assert abs(fused_val.mean()) < 1e-5 and abs(maps_val.mean()) < 1e-3
    x, _, _ = dataset_split(run, None, "test")
    train = dataset_split(run, None, "train")[0]
    scales = scales_for(min(train.shape[2:]))
    assert scales == (1, 2)  # the run's images are large enough for both

    def z(values, reference):
        return (values - reference.mean()) / reference.std()

    def peaks(images, scale):
        return patch_maps(images, patch_memory(train, scale=scale), scale=scale).reshape(len(images), -1).max(1)

    expected = z(anomaly_scores(run, x, "max")[0], anomaly_scores(run, x_val, "max")[0])
    for scale in scales:
        expected += z(peaks(x, scale), peaks(x_val, scale))
    fused, _ = anomaly_scores(run, x, "max+patch")
    assert np.allclose(fused, expected, atol=1e-5)


def test_max_plus_patch_is_not_exported_and_needs_images(draem_run, tmp_path):
    import convae
    from convae.errors import ConvaeError
    from convae.inference.anomaly import anomaly_scores
    from convae.inference.export import export_run

    out = tmp_path / "scorer.onnx"
    with pytest.raises(ConvaeError, match="max\\+patch score compares patches .* not exported"):
        export_run(draem_run, out, scores=True, metric="max+patch")
    assert not out.exists()
    with pytest.raises(ConvaeError, match="at least 9x9 pixels"):
        anomaly_scores(convae.load(draem_run), np.zeros((2, 3, 8, 8), np.float32), "max+patch")
    # the run's memory holds half-resolution patches too, which need twice the size
    with pytest.raises(ConvaeError, match="at least 18x18 pixels"):
        anomaly_scores(convae.load(draem_run), np.zeros((2, 1, 12, 12), np.float32), "max+patch")
