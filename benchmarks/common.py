"""What the benchmark scripts share: `--set KEY=VALUE` training settings."""

from __future__ import annotations

import argparse
import json
from typing import Any


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
