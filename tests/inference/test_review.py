"""The review page, checked in a real browser (headless Chromium): one card per test image in score order,
plots drawn, a threshold that moves the flagged count to what `convae score` counts, no console errors."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from convae.cli import main
from convae.inference.review import Review, write_review

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]


def browse(page: Path, fragment: str = "", screenshot: Path | None = None) -> tuple[str, str]:
    """(the DOM after the page's script ran, the browser's log) of ``page`` opened from a file:// URL."""
    url = page.resolve().as_uri() + fragment
    extra = [f"--screenshot={screenshot}", "--window-size=1300,1800"] if screenshot else ["--dump-dom"]
    done = subprocess.run([CHROMIUM, *FLAGS, *extra, url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


def console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "ERROR" in line)]


def _review(n: int = 12, masks: bool = True) -> Review:
    rng = np.random.default_rng(0)
    types = ["good"] * 5 + ["scratch"] * 4 + ["hole"] * 3
    x = rng.random((n, 1, 16, 16)).astype(np.float32)
    maps = rng.random((n, 16, 16)).astype(np.float32)
    truth = np.array([t != "good" for t in types])
    mask = np.zeros((n, 16, 16), np.uint8)
    mask[truth, 4:9, 4:9] = 1
    maps[truth, 4:9, 4:9] += 1.5
    scores = maps.reshape(n, -1).max(1).astype(np.float64)
    summary = {"metric": "max", "image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7}
    summary["per_type"] = {"hole": {"image_auroc": 1.0, "pixel_auroc": 0.9, "aupro": 0.8}}
    return Review(
        title="convae review: test",
        x=x,
        reconstructions=x * 0.9,
        maps=maps,
        scores=scores,
        threshold=float(np.sort(scores)[4]),
        validation_scores=rng.random(20) + 0.5,
        summary=summary,
        types=types if masks else None,
        masks=mask if masks else None,
        files=[f"test/{t}/{i:03d}.png" for i, t in enumerate(types)],
        facts={"data": "mvtec:somewhere", "run": "runs/x"},
    )


def _flagged(dom: str) -> int:
    return int(re.search(r'id="counts" data-flagged="(\d+)"', dom).group(1))


def test_the_page_shows_every_image_by_score_draws_its_plots_and_moves_the_threshold(tmp_path):
    review = _review()
    page = write_review(tmp_path / "review.html", review)
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched: it works offline, copied anywhere
    dom, log = browse(page)
    assert not console_errors(log), console_errors(log)
    scores = [float(s) for s in re.findall(r'class="card[^"]*" data-score="([^"]+)"', dom)]
    assert len(scores) == 12 and scores == sorted(review.scores.tolist(), reverse=True)
    for name in ("roc", "pro", "scores"):
        plot = re.search(rf'data-plot="{name}".*?</figure>', dom, re.S).group(0)
        points = re.findall(r'class="curve" points="([^"]+)"', plot)
        assert points and all(len(p.split()) >= 2 for p in points), name
    assert _flagged(dom) == int((review.scores > review.threshold).sum())
    for t in (0.0, float(np.median(review.scores)), float(review.scores.max()) - 1e-9, 10.0):
        dom, _ = browse(page, f"#threshold={t!r}")
        assert _flagged(dom) == int((review.scores > t).sum()), t
    # the false-positive rate on the validation images follows the threshold too
    dom, _ = browse(page, "#threshold=1.0")
    fpr = float(re.search(r'id="fpr">([0-9.]+) %', dom).group(1))
    assert fpr == pytest.approx(100 * (review.validation_scores > 1.0).mean(), abs=0.05)
    browse(page, screenshot=tmp_path / "review.png")
    assert (tmp_path / "review.png").stat().st_size > 10_000


def test_without_labels_or_masks_the_page_leaves_the_metrics_out(tmp_path):
    review = _review(masks=False)
    review.summary = {"metric": "mse"}
    page = write_review(tmp_path / "plain.html", review)
    dom, log = browse(page)
    assert not console_errors(log)
    assert 'data-plot="scores"' in dom and 'data-plot="roc"' not in dom and 'data-plot="pro"' not in dom
    assert "No labels or masks" in dom and len(re.findall(r'class="card', dom)) == 12


def test_score_writes_the_page_from_the_command_line_and_refuses_bad_paths(run_dir, tmp_path, capsys):
    page = tmp_path / "out" / "review.html"
    assert main(["score", str(run_dir), "--report", str(page)]) == 0
    dom, log = browse(page)
    assert not console_errors(log) and len(re.findall(r'class="card', dom)) == 12  # the held-out test split
    capsys.readouterr()
    assert main(["score", str(run_dir), "--report", str(tmp_path)]) == 2  # a folder
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a folder" in err
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["score", str(run_dir), "--report", str(blocked / "review.html")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # scoring that fails writes no page
    bad = tmp_path / "rgb.npy"
    np.save(bad, np.zeros((4, 3, 8, 8), np.float32))
    failed = tmp_path / "failed.html"
    assert main(["score", str(run_dir), "--data", f"npy:{bad}", "--report", str(failed)]) == 2
    assert not failed.exists() and capsys.readouterr().err.count("\n") == 1
