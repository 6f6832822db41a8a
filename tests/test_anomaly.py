from convae import anomaly
from convae.cli import main
from convae.run import dataset_split, load


def test_score_with_anomaly_class(run_dir, tmp_path, capsys):
    result = anomaly.score(run_dir, fpr=0.1, anomaly_class=2, maps_dir=tmp_path / "maps", maps=4)
    assert 0 <= result["roc_auc"] <= 1 and 0 <= result["recall"] <= 1
    # no test split in the run's data: its validation split (held out from training) is scored
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
