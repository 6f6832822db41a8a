import html
import json

import numpy as np
import pytest

from convae.cli import main
from convae.inference import anomaly
from convae.inference.run import dataset_split, load


def test_score_with_anomaly_class(run_dir, tmp_path, capsys):
    result = anomaly.score(run_dir, fpr=0.1, anomaly_class=2, maps_dir=tmp_path / "maps", maps=4)
    assert 0 <= result["roc_auc"] <= 1 and 0 <= result["recall"] <= 1
    # no test split in the run's data: the split held out from it (test_fraction 0.1 of 120) is scored
    assert len(result["scores"]) == 12 and len(list((tmp_path / "maps").iterdir())) == 4
    # The threshold leaves about 10% of the (normal) validation samples above it.
    run = load(run_dir)
    x_val, y_val, _ = dataset_split(run, None, "val")
    val_scores, _ = anomaly.anomaly_scores(run, x_val[y_val != 2])
    assert (val_scores > result["threshold"]).mean() <= 0.1 + 1e-9
    csv_path = tmp_path / "scores.csv"
    assert main(["score", str(run_dir), "--anomaly-class", "1", "--out", str(csv_path), "--metric", "ssim"]) == 0
    assert "ROC-AUC" in capsys.readouterr().out
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "index,score,flagged,label" and len(lines) == 13
    assert main(["score", str(run_dir), "--anomaly-class", "7"]) == 2
    assert "class 7 does not occur" in capsys.readouterr().err
    # mean + k standard deviations of the (normal) validation scores, instead of a false-positive rate
    by_sigmas = anomaly.score(run_dir, anomaly_class=2, sigmas=2.5)
    assert by_sigmas["threshold"] == pytest.approx(val_scores.mean() + 2.5 * val_scores.std())
    assert by_sigmas["sigmas"] == 2.5 and "fpr_target" not in by_sigmas
    saved = json.loads((run_dir / "thresholds.json").read_text())
    assert saved["mse mean+2.5sd without class 2"]["threshold"] == by_sigmas["threshold"]
    assert main(["score", str(run_dir), "--sigmas", "nan"]) == 2 and "finite" in capsys.readouterr().err


def test_the_one_class_protocol_trains_on_one_class_and_scores_the_others_as_anomalies(tmp_path, capsys):
    from helpers import write_npz

    from convae.config import resolve_config
    from convae.errors import ConvaeError
    from convae.training.train import prepare, train

    data = f"npy:{write_npz(tmp_path / 'd.npz', n=150)}"  # labels 0, 1, 2
    settings = dict(data=data, arch="conv(8,3,stride=2) relu dense(6)", epochs=2, batch_size=16, quiet=True)
    config = resolve_config({**settings, "normal_class": 1, "out": str(tmp_path / "run")})
    prepared = prepare(config)
    y = prepared.dataset.y_train
    assert (
        set(y[prepared.train_idx]) == {1} and set(y[prepared.val_idx]) == {1} and set(y[prepared.test_idx]) == {0, 1, 2}
    )
    train(config)
    result = anomaly.score(tmp_path / "run", fpr=0.1)
    assert result["normal_class"] == 1 and 0 <= result["image_auroc"] == result["roc_auc"] <= 1
    assert result["metric"] == "mse+knn"  # the one-class protocol's best measured score, by default
    assert main(["score", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    assert "class 1 as normal, the others as anomalies: ROC-AUC" in printed and "threshold (mse+knn," in printed
    by_codes = anomaly.score(tmp_path / "run", metric="knn", fpr=0.1)
    assert by_codes["metric"] == "knn" and 0 <= by_codes["image_auroc"] <= 1 and by_codes["threshold"] > 0
    both = anomaly.score(tmp_path / "run", metric="mse+knn", fpr=0.1)
    run = load(tmp_path / "run")
    x_val, _, _ = dataset_split(run, None, "val")
    combined, _ = anomaly.anomaly_scores(run, x_val, "mse+knn")
    assert abs(combined.mean()) < 1e-6 and 0 <= both["image_auroc"] <= 1  # each part standardised on these
    with pytest.raises(ConvaeError, match="--normal-class 5 does not occur in d"):
        prepare(resolve_config({**settings, "normal_class": 5}))
    with pytest.raises(ConvaeError, match="not both"):
        resolve_config({**settings, "normal_class": 1, "exclude_classes": [0]}).validate()


def test_aupro_is_exact_against_a_threshold_sweep():
    import numpy as np
    from skimage.measure import label

    from convae.metrics import aupro

    rng = np.random.default_rng(0)
    masks = np.zeros((6, 12, 12), bool)
    masks[0, 2:5, 2:5] = masks[0, 8:10, 7:11] = masks[3, 5:9, 1:3] = True  # three regions, two images
    maps = rng.random(masks.shape) + 0.7 * masks
    regions = [(label(m, connectivity=2), i) for i, m in enumerate(masks)]
    points = [(0.0, 0.0)]
    for t in np.sort(np.unique(maps))[::-1]:  # every distinct value as a threshold
        flagged = maps >= t
        fpr = (flagged & ~masks).sum() / (~masks).sum()
        pro = np.mean([flagged[i][lab == r].mean() for lab, i in regions for r in range(1, lab.max() + 1)])
        points.append((fpr, pro))
    fprs, pros = np.array(points).T
    keep = fprs <= 0.3
    x = np.r_[fprs[keep], 0.3]
    y = np.r_[pros[keep], np.interp(0.3, fprs, pros)]
    assert aupro(masks, maps) == pytest.approx(np.trapezoid(y, x) / 0.3, rel=1e-9)
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)


def test_scoring_an_inspection_run_gives_image_and_pixel_figures_per_defect_type(tmp_path, capsys):
    import json

    from helpers import train_inspection_run

    arch = "conv(8,3,stride=2) relu conv(8,3,stride=2) relu"
    layout = dict(normal=24, test_normal=4, per_defect=3, size=32)
    out = train_inspection_run(tmp_path, arch, "--epochs", "2", "--batch-size", "8", "--loss", "ssim", **layout)
    capsys.readouterr()
    assert main(["score", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert 0 <= result[key] <= 1, key
    assert set(result["per_type"]) == {"hole", "scratch", "stain"} and result["samples"] == 13
    assert set(result["per_type"]["hole"]) == {"image_auroc", "pixel_auroc", "aupro"}
    csv_path, maps = tmp_path / "scores.csv", tmp_path / "maps"
    assert main(["score", str(out), "--out", str(csv_path), "--maps", str(maps)]) == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "index,score,flagged,label,file" and len(lines) == 14
    assert all(line.split(",")[4].endswith(".png") and "/test/" in line for line in lines[1:])
    # The overlays are named by rank, the highest score first: input | map | mask, side by side.
    from PIL import Image

    pictures = sorted(maps.iterdir())
    assert len(pictures) == 13 and pictures[0].name.startswith("001_")
    best = max(lines[1:], key=lambda line: float(line.split(",")[1])).split(",")[4]
    assert pictures[0].name == f"001_{best.split('/')[-2]}_{best.split('/')[-1]}"
    with Image.open(pictures[0]) as img:
        assert img.size == (3 * 32 + 4, 32) and img.mode == "RGB"
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert thresholds["max fpr=0.05"]["threshold"] == result["threshold"]


def test_a_run_trained_on_patches_scores_whole_images_by_sliding_windows(tmp_path, capsys):
    import json

    from helpers import train_inspection_run

    arch = "conv(8,3,stride=2) relu dense(8)"  # a dense layer: the model takes 16x16 patches only
    layout = dict(normal=12, test_normal=3, per_defect=2, size=40)
    out = train_inspection_run(tmp_path, arch, "--epochs", "1", "--batch-size", "8", "--crop", "16", **layout)
    run = load(out)
    assert run.model.input_shape == (3, 16, 16) or run.model.input_shape == (1, 16, 16)
    x, _, _ = dataset_split(run, None, "test")
    assert x.shape[2:] == (40, 40) and run.reconstruct(x[:2]).shape == x[:2].shape
    scores, maps = anomaly.anomaly_scores(run, x, "max")
    assert maps.shape == (len(x), 40, 40) and scores.shape == (len(x),)
    # the patch distances of max+patch are taken on the whole images too, beside the windows' residual
    fused, fused_maps = anomaly.anomaly_scores(run, x, "max+patch")
    assert fused_maps.shape == maps.shape and fused.shape == scores.shape and not np.allclose(fused, scores)
    capsys.readouterr()
    assert main(["score", str(out), "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["pixel_auroc"] <= 1
    # Codes are of patches: what needs codes of whole images says so in one line.
    for command in (["eval", str(out)], ["encode", str(out), "--out", str(tmp_path / "c.npy")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "16-pixel patches (--crop)" in err and err.count("\n") == 1
    assert main(["train", "--data", f"mvtec:{tmp_path / 'set'}", "--crop", "41", "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "--crop 41 is larger than the samples" in err and err.count("\n") == 1
    assert not (tmp_path / "r2").exists()
    assert main(["train", "--data", f"mvtec:{tmp_path / 'set'}", "--crop", "16", "--normalize", "zca"]) == 2
    assert "zca whitens whole samples" in capsys.readouterr().err


def test_scoring_data_of_another_channel_count_is_one_line(run_dir, tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "rgb.npy", np.random.default_rng(0).random((6, 3, 8, 8), dtype=np.float32))
    assert main(["score", str(run_dir), "--data", f"npy:{tmp_path / 'rgb.npy'}", "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "rgb.npy: samples have 3 channel(s), the run's model takes 1" in err and err.count("\n") == 1
    assert not (tmp_path / "s.csv").exists()


def test_code_distances_are_the_mean_distance_to_the_nearest_reference_codes():
    import numpy as np

    rng = np.random.default_rng(0)
    reference, codes = rng.normal(size=(50, 4)), rng.normal(size=(7, 4))
    distances = np.linalg.norm(codes[:, None] - reference[None], axis=2)
    want = np.sort(distances, axis=1)[:, :5].mean(1)
    assert np.allclose(anomaly.code_distances(codes, reference), want, atol=1e-5)
    assert np.allclose(anomaly.code_distances(reference[:3], reference, k=1), 0, atol=1e-5)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_score_that_fails_leaves_the_run_as_it_was(run_dir, tmp_path, capsys):
    """The threshold is recorded in thresholds.json only once the whole command has succeeded."""
    import numpy as np

    before = _snapshot(run_dir)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 1, 9, 9), np.float32))  # the run's channels, another size: its dense layer refuses
    assert main(["score", str(run_dir), "--data", f"npy:{bad}", "--out", str(tmp_path / "s.csv")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert _snapshot(run_dir) == before and not (tmp_path / "s.csv").exists()
    assert main(["score", str(run_dir), "--fpr", "0.2"]) == 0  # a score that succeeds records its threshold
    after = _snapshot(run_dir)
    assert set(after) - set(before) <= {"thresholds.json"} and "mse fpr=0.2" in after["thresholds.json"].decode()


def test_a_threshold_on_too_few_validation_samples_comes_with_a_warning():
    assert anomaly.threshold_caveat(20, 0.05) is None and anomaly.threshold_caveat(10, 0.1) is None
    caveat = anomaly.threshold_caveat(19, 0.05)
    assert "rests on 19 validation samples" in caveat and "5% false-positive rate needs at least 20" in caveat
    assert "at least 34" in anomaly.threshold_caveat(1, 0.03) and "1 validation sample;" in anomaly.threshold_caveat(
        1, 0.03
    )
    assert anomaly.threshold_caveat(2, 0.05, sigmas=3) is None
    assert "a spread needs at least 2" in anomaly.threshold_caveat(1, 0.05, sigmas=3)


def test_score_says_where_it_wrote_and_warns_in_one_line_when_the_threshold_is_thin(run_dir, tmp_path, capsys):
    out, page = tmp_path / "scores.csv", tmp_path / "review.html"
    run = load(run_dir)
    n_val = len(dataset_split(run, None, "val")[0])
    assert n_val < 20  # too few for a 5% false-positive rate
    assert main(["score", str(run_dir), "--out", str(out), "--report", str(page)]) == 0
    captured = capsys.readouterr()
    assert f"scores: {out}" in captured.out and f"review page: {page}" in captured.out
    assert (
        captured.err.count("\n") == 1 and f"warning: the threshold rests on {n_val} validation samples" in captured.err
    )
    assert html.escape(f"the run's {n_val} normal validation images") in page.read_text()
    assert main(["score", str(run_dir), "--fpr", "0.1", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)["validation_samples"] == n_val
