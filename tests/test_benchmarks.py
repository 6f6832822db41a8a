import json
import subprocess
import sys
from pathlib import Path

import pytest

from convae import checkpoint
from convae.config import resolve_config
from convae.training.train import train

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script, *args):
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=120
    )


def test_cpu_variants_times_a_preset_in_each_variant():
    args = ["--arch", "small", "--batch", "4,2", "--steps", "1", "--variants", "plain,cl_fused"]
    for isa in ("native", "avx2"):
        result = _run("cpu_variants.py", *args, "--isa", isa)
        assert result.returncode == 0, result.stderr
        head, *rows = result.stdout.splitlines()
        assert ("oneDNN cap AVX2" in head) == (isa == "avx2"), head  # the child's kernels are capped
        assert [row.split()[:2] for row in rows] == [["small", "b4"], ["small", "b2"]]
        for row in rows:
            cells = row.split("img/s:")[1].split()
            assert cells[0::2] == ["plain", "cl_fused"] and all(float(rate) > 0 for rate in cells[1::2])


def test_cpu_variants_rejects_an_unknown_arch():
    result = _run("cpu_variants.py", "--arch", "fmnist-99")
    assert result.returncode == 2 and "preset" in result.stderr and "Traceback" not in result.stderr


def test_quality_finishes_a_stopped_run_and_evaluates_it(tmp_path):
    config = resolve_config(dict(data="digits", arch="small", epochs=2, batch_size=64, threads=1))
    config.out, config.quiet, config.histograms = str(tmp_path / "run"), True, False

    def stop_in_second_epoch(step):
        if step == 30:  # 26 steps an epoch: the first epoch's checkpoint is written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=stop_in_second_epoch)
    result = _run("quality.py", "--resume", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.splitlines()[0])
    assert row["preset"] == "small" and row["epochs"] == 2 and row["code"] == 16 and 0 < row["probe"] <= 1
    assert row["test_mse"] > 0 and row["pca_mse"] > 0 and "| small | 16 | 2 |" in result.stdout
    metrics = checkpoint.load(tmp_path / "run" / "last.pt")["metrics"]
    assert len(metrics) == 2 and row["minutes"] == round(sum(m["seconds"] for m in metrics) / 60, 1)

    finished = (tmp_path / "run" / "last.pt").stat().st_mtime_ns
    again = _run("quality.py", "--resume", str(tmp_path / "run"))  # finished: evaluated, not trained
    assert again.returncode == 0 and json.loads(again.stdout.splitlines()[0])["test_mse"] == row["test_mse"]
    assert (tmp_path / "run" / "last.pt").stat().st_mtime_ns == finished
    for args in (["--resume", str(tmp_path / "nothing")], ["--resume", str(tmp_path / "run"), "--epochs", "3"]):
        refused = _run("quality.py", *args)
        assert refused.returncode == 2 and "error:" in refused.stderr and "Traceback" not in refused.stderr, args


def test_streaming_compares_placements_and_measures_a_sparse_array(tmp_path):
    result = _run("streaming.py", "--throughput", "--samples", "400", "--size", "16", "--steps", "14")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = result.stdout.splitlines()[1]
    assert "resident (host)" in figures and "streamed from the file" in figures and "% of resident" in figures
    result = _run("streaming.py", "--big", "0.01", "--tmp", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0.01 GB array" in result.stdout and "peak RSS" in result.stdout
    assert list(tmp_path.iterdir()) == []  # the sparse file and its run are gone


def test_scoring_speed_times_whole_images_and_a_large_one_by_windows():
    result = _run(
        "scoring_speed.py",
        "--arch",
        "small",
        "--size",
        "16",
        "--batch",
        "2",
        "--batches",
        "1",
        "--large",
        "40",
        "--patches",
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["images_per_s"] > 0 and row["seconds_per_large_image"] > 0 and row["windows"] == 16
    assert row["patch_images_per_s"] > 0 and row["patch_seconds_per_large_image"] > 0


def test_inspection_trains_and_reports_image_and_pixel_figures_per_type():
    result = _run("inspection.py", "--epochs", "1", "--size", "32")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["arch"] == "inspection" and set(row["per_type"]) == {"hole", "scratch", "stain"}
    assert all(0 <= row[k] <= 1 for k in ("image_auroc", "pixel_auroc", "aupro"))


def _real_inspection():
    import importlib

    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module("real_inspection")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_real_photograph_sets_keep_regions_apart_and_masks_exact(tmp_path):
    import numpy as np
    from scipy.ndimage import binary_dilation

    bench = _real_inspection()
    root = bench.build(tmp_path, "gravel", n_train=4, n_good=2, per_kind=2)
    names = sorted(p.name for p in (root / "test").iterdir())
    assert names == ["crack", "foreign", "good", "scratch", "smudge", "warp"]
    rng = np.random.default_rng(0)
    clean = bench.crops(bench.photograph("gravel"), (bench.TRAIN_ROWS, 512), 1, rng)[0]
    # What changed lies inside the mask: exactly, but for the smudge's soft edge (within 6 pixels) and the
    # swirl's rim, where pixels moved by less than the one pixel that the mask counts (within 12).
    reach = {"smudge": 6, "warp": 12}
    for kind in bench.KINDS:
        bad, mask = bench.defect(kind, clean, bench.photograph("brick"), rng)
        changed = (bad != clean).any(-1)
        near = binary_dilation(mask, iterations=reach[kind]) if kind in reach else mask
        assert mask.any() and not (changed & ~near).any(), kind
        assert changed[mask].mean() > 0.5, kind
    # training crops come from the top rows, test crops from below: no test pixel was trained on
    top = bench.crops(bench.photograph("gravel"), (0, bench.TRAIN_ROWS), 50, rng)
    assert top.shape == (50, 128, 128, 1)


def test_throughput_names_the_processor_and_gives_each_case_as_a_share_of_the_measured_peak():
    result = _run(
        "throughput.py", "--archs", "keras", "--batches", "32", "--samples", "256", "--epochs", "2", "--repeats", "1"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("processor: ") and "GFLOP/s fp32" in result.stdout
    (row,) = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 < row["peak_fraction"] < 1.5 and row["peak_gflops"] > 0 and row["ratio"] > 0
    assert set(row["cpu"]) == {"model", "simd", "native_bf16"} and isinstance(row["amp"], bool)
