"""What the benchmark scripts share: `--set KEY=VALUE` training settings, a child's peak memory."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"


def peak_of(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run ``command`` (the project from source) in a fresh parent of its own, so that the peak
    resident memory (ru_maxrss of its largest process, in MB) is this command's alone; returns it
    with the wall time in seconds and the command's stderr. Exits with its last line on failure."""
    report = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    report += "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(SRC)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", report, *command], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    code, peak = result.stdout.splitlines()[-1].split()
    if code != "0":
        sys.exit(f"{Path(sys.argv[0]).name}: the command failed: {result.stderr.strip().splitlines()[-1]}")
    return int(peak) / 1024, seconds, result.stderr


def add_set_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help=help)


def parse_set(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs as training settings; values are JSON (8, 2e-3, true), else plain strings (adamw).

    A key given twice takes its last value, so a list of common settings can be followed by an override.
    """
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE, not {item!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings
