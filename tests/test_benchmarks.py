import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cpu_variants.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_cpu_variants_times_a_preset_in_each_variant():
    result = _run("--arch", "small", "--batch", "4", "--steps", "1", "--variants", "plain,bf16")
    assert result.returncode == 0, result.stderr
    rates = [line.split()[:3] for line in result.stdout.splitlines()[1:]]
    assert [r[0] for r in rates] == ["plain", "bf16"] and all(float(r[1]) > 0 and r[2] == "img/s" for r in rates)


def test_cpu_variants_rejects_an_unknown_arch():
    result = _run("--arch", "fmnist-99")
    assert result.returncode == 2 and "preset" in result.stderr and "Traceback" not in result.stderr


PROBE_SCRIPT = SCRIPT.with_name("probe_objectives.py")


def test_probe_objectives_trains_with_a_code_term_and_reports_the_probe():
    args = ["--data", "digits", "--arch", "small", "--epochs", "1", "--batch", "64", "--threads", "1"]
    result = subprocess.run(
        [sys.executable, str(PROBE_SCRIPT), *args, "--objective", "contrastive", "--augment", "shift:1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    *_, last = result.stdout.splitlines()
    fields = last.split()
    assert fields[:2] == ["objective", "contrastive"]
    assert float(fields[fields.index("MSE") + 1]) > 0 and 0 < float(fields[fields.index("probe") + 1]) <= 1


def test_probe_objectives_needs_two_views_for_a_code_term():
    result = subprocess.run(
        [sys.executable, str(PROBE_SCRIPT), "--data", "digits", "--objective", "invariance"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--augment" in result.stderr and "Traceback" not in result.stderr
