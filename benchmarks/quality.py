"""Train and evaluate presets on Fashion-MNIST; print test MSE beside PCA at the same code size.

    python benchmarks/quality.py                          # the CPU-sized Fashion-MNIST presets, each its own recipe
    python benchmarks/quality.py --presets fmnist-32-res fmnist-16-res fmnist-64-res   # residual: 1.5 h each, 2 cores
    python benchmarks/quality.py --presets fmnist-16 fmnist-64 --out runs/quality
    python benchmarks/quality.py --presets --arch "conv(32,3,stride=2) bn gelu dense(32)" \
        --set epochs=8 lr=2e-3 optimizer=adamw schedule=onecycle   # an ablation: any spec, any recipe
    python benchmarks/quality.py --resume runs/quality/fmnist-32-contrastive-20261129-194500   # go on with a run

Each preset trains with its registered recipe (the same as `convae train --arch
PRESET --data fashion-mnist`) and is evaluated on the official test split with
`convae.inference.evaluate.evaluate`. The table gives the wall-clock training time and
the machine; runs stay in --out for TensorBoard. A run longer than one sitting
can be stopped (Ctrl-C, or the machine goes away) and finished with --resume:
it continues from its last checkpoint with its saved settings, then is
evaluated; its minutes are then the epochs' training time summed over the
sittings (validation not counted).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_set_flag, parse_set

from convae import checkpoint, presets
from convae.config import TrainConfig, resolve_config
from convae.inference.evaluate import evaluate
from convae.training.train import train

DEFAULT = ["fmnist-32", "fmnist-32-wide", "fmnist-16", "fmnist-64", "fmnist-denoise"]


def fresh_dir(path: Path) -> str:
    """A new directory at ``path`` (``path-2``, ``-3``... if taken): several quality.py
    processes may share --out and start within the same second."""
    candidate = path
    for i in itertools.count(2):
        try:
            candidate.mkdir(parents=True)  # atomic: exactly one process gets each name
            return str(candidate)
        except FileExistsError:
            candidate = path.with_name(f"{path.name}-{i}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--presets", nargs="*", choices=presets.names(), help=f"(default, unless --resume: {' '.join(DEFAULT)})"
    )
    parser.add_argument("--arch", nargs="+", default=[], help="architecture strings to train beside the presets")
    add_set_flag(parser, "training settings for every run (JSON values: epochs=8 lr=2e-3 optimizer=adamw)")
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--epochs", type=int, help="override every preset's epochs (quick looks)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", nargs="+", default=[], metavar="RUN", help="finish these runs, then evaluate")
    args = parser.parse_args()
    if args.resume and (args.set or args.epochs):
        parser.error("--resume continues runs with their saved settings; give no --set or --epochs")
    if args.presets is None:
        args.presets = [] if args.resume else DEFAULT
    overrides = parse_set(parser, args.set)
    machine = _machine(args.device, overrides.get("threads"))
    runs = [(name, name) for name in args.presets] + [(f"arch-{i + 1}", a) for i, a in enumerate(args.arch)]
    rows = []
    for run in args.resume:
        try:
            state = checkpoint.load(Path(run) / "last.pt")
            config, metrics = TrainConfig(**state["train_config"]), state["metrics"]
            if state["epoch"] < config.epochs:
                metrics = train(resume=run)["metrics"]
        except (ValueError, OSError) as err:  # not a run, or one that cannot go on
            parser.error(f"{run}: {err}")
        minutes = sum(m["seconds"] for m in metrics) / 60  # training time over all sittings
        rows.append(_row(str(config.arch), run, config.epochs, minutes, _machine(config.device, config.threads)))
    for name, arch in runs:
        settings = {"data": "fashion-mnist", "arch": arch, "device": args.device, "quiet": True, **overrides}
        settings["out"] = fresh_dir(Path(args.out) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        if args.epochs:
            settings["epochs"] = args.epochs
        started = time.perf_counter()
        try:
            config = resolve_config(settings)
            train(config)
        except ValueError as err:  # a bad spec or setting: one line, as the CLI does
            parser.error(f"{name}: {err}")
        minutes = (time.perf_counter() - started) / 60
        rows.append(_row(name if name == arch else f"{name}: {arch}", config.out, config.epochs, minutes, machine))
    print(f"\n| preset | code | epochs | minutes | test MSE | PSNR | probe | PCA MSE | PCA probe |  ({machine})")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        extra = f" (denoised {r['denoised_mse']}, noisy input {r['noisy_input_mse']})" if "denoised_mse" in r else ""
        print(
            f"| {r['preset']} | {r['code']} | {r['epochs']} | {r['minutes']} | {r['test_mse']}{extra} | {r['psnr']} "
            f"| {r['probe']} | {r['pca_mse']} | {r['pca_probe']} |"
        )


def _machine(device: str, threads: int | None) -> str:
    if torch.cuda.is_available() and device != "cpu":
        return torch.cuda.get_device_name()
    return f"{platform.machine()} CPU, {threads or torch.get_num_threads()} threads"


def _row(name: str, run: str, epochs: int, minutes: float, machine: str) -> dict:
    """Evaluate a trained run against PCA; print its row as JSON and return it."""
    result = evaluate(run)
    pca = next(v for k, v in result.items() if k.startswith("pca_"))
    model = result["model"]
    row = {
        "preset": name,
        "code": result["code_size"],
        "epochs": epochs,
        "minutes": round(minutes, 1),
        "test_mse": round(model["mse"], 5),
        "psnr": round(model["psnr"], 2),
        "probe": round(model.get("probe_accuracy", float("nan")), 3),
        "pca_mse": round(pca["mse"], 5),
        "pca_probe": round(pca.get("probe_accuracy", float("nan")), 3),
        "machine": machine,
        "run": str(run),
    }
    if "denoised_mse" in model:
        row.update(denoised_mse=round(model["denoised_mse"], 5), noisy_input_mse=round(model["noisy_input_mse"], 5))
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    main()
