"""Keras 3 (TensorFlow backend) against PyTorch and convae on the keras.io denoising architecture.

    python benchmarks/keras_side_by_side.py --keras-python /path/to/venv-with-keras/bin/python

The keras.io example "Convolutional autoencoder for image denoising" encodes
with conv(32,3) relu maxpool(2) twice and decodes with two strided transposed
convolutions and a final conv. Each measurement runs in a fresh process
(TensorFlow and PyTorch do not share a process well), and the sides alternate
so that a drifting machine affects them alike; the table gives medians.

  keras            the keras.io model as published, model.fit, Adam, BCE (Keras 3, TensorFlow backend)
  keras-mirror     Keras with convae's mirror of the same encoder (UpSampling2D in place of
                   max-unpooling, stride-1 transposed convs): the same FLOPs as convae's model
  torch-plain      the keras.io model as published, written in PyTorch, a plain loop
                   (DataLoader over a TensorDataset, float32, Adam, BCE, loss.item() per step)
  convae           `convae train --arch keras-denoise` (the same encoder, convae's mirror) with
                   its defaults for the device, BCE loss

Keras runs only where --keras-python has `keras` and `tensorflow` (install them
in a separate environment: `pip install keras tensorflow-cpu`); the rows that
need it are left out otherwise. Data: Fashion-MNIST when present, else random.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
SIDES = ("keras", "keras-mirror", "torch-plain", "convae")


def _data(samples: int) -> np.ndarray:
    """(N, 28, 28, 1) float32 in [0, 1]: Fashion-MNIST's first images or random ones.

    Read by hand, not with convae.data.sources: the Keras side runs in an interpreter
    that has no torch, and importing convae imports torch. Only Debian's
    location is looked at; elsewhere the benchmark uses random data.
    """
    idx = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
    if idx.exists():
        import gzip

        raw = np.frombuffer(gzip.decompress(idx.read_bytes()), np.uint8, offset=16).reshape(-1, 28, 28, 1)
        return raw[:samples].astype(np.float32) / 255
    return np.random.default_rng(0).random((samples, 28, 28, 1), dtype=np.float32)


def child_keras(x: np.ndarray, batch: int, epochs: int, mirror: bool) -> dict:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    from keras import layers

    inputs = keras.Input(shape=(28, 28, 1))
    h = layers.Conv2D(32, 3, activation="relu", padding="same")(inputs)
    h = layers.MaxPooling2D(2, padding="same")(h)
    h = layers.Conv2D(32, 3, activation="relu", padding="same")(h)
    h = layers.MaxPooling2D(2, padding="same")(h)
    if mirror:
        h = layers.UpSampling2D(2)(h)
        h = layers.Conv2DTranspose(32, 3, activation="relu", padding="same")(h)
        h = layers.UpSampling2D(2)(h)
        out = layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(h)
    else:
        h = layers.Conv2DTranspose(32, 3, strides=2, activation="relu", padding="same")(h)
        h = layers.Conv2DTranspose(32, 3, strides=2, activation="relu", padding="same")(h)
        out = layers.Conv2D(1, 3, activation="sigmoid", padding="same")(h)
    model = keras.Model(inputs, out)
    model.compile(optimizer="adam", loss="binary_crossentropy")

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    timer = Timer()
    model.fit(x, x, epochs=epochs, batch_size=batch, shuffle=True, verbose=0, callbacks=[timer])
    return {"img_s": statistics.median(len(x) / s for s in timer.seconds[1:])}


def _torch_model(mirror: bool):
    """The layers of ``child_keras``'s model in PyTorch (for the plain loop and for counting FLOPs)."""
    from torch import nn

    encoder = [nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    encoder += [nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    if mirror:
        decoder = [nn.Upsample(scale_factor=2), nn.ConvTranspose2d(32, 32, 3, padding=1), nn.ReLU()]
        decoder += [nn.Upsample(scale_factor=2), nn.ConvTranspose2d(32, 1, 3, padding=1), nn.Sigmoid()]
    else:
        # padding/output_padding reproduce Keras's "same" for stride-2 transposed convs (7 -> 14 -> 28).
        decoder = [nn.ConvTranspose2d(32, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU()]
        decoder += [nn.ConvTranspose2d(32, 32, 3, stride=2, padding=1, output_padding=1), nn.ReLU()]
        decoder += [nn.Conv2d(32, 1, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*encoder, *decoder)


def _train_flops(model, batch: int = 128) -> float:
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(batch, 1, 28, 28)
    counter = FlopCounterMode(display=False)
    with counter:
        F.binary_cross_entropy(model(x), x).backward()
    return counter.get_total_flops() / batch


def child_torch_plain(x: np.ndarray, batch: int, epochs: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = _torch_model(mirror=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.as_tensor(x).permute(0, 3, 1, 2).contiguous()
    loader = DataLoader(TensorDataset(data), batch_size=batch, shuffle=True)
    rates = []
    for epoch in range(epochs):
        start, total = time.perf_counter(), 0.0
        for (xb,) in loader:
            loss = F.binary_cross_entropy(model(xb), xb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        if epoch > 0:
            rates.append(len(data) / (time.perf_counter() - start))
    return {"img_s": statistics.median(rates), "train_mflop_per_img": _train_flops(model) / 1e6}


def child_convae(x: np.ndarray, batch: int, epochs: int) -> dict:
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    import convae
    from convae.config import resolve_config
    from convae.presets import get
    from convae.training.train import train

    with tempfile.TemporaryDirectory() as tmp:
        data_file = os.path.join(tmp, "x.npy")
        np.save(data_file, (x.transpose(0, 3, 1, 2) * 255).round().astype(np.uint8))
        settings = dict(
            data=f"npy:{data_file}",
            arch="keras-denoise",
            epochs=epochs,
            batch_size=batch,
            loss="bce",
            optimizer="adam",
            schedule="constant",
            lr=1e-3,
            val_fraction=0.0,
            out=os.path.join(tmp, "run"),
            quiet=True,
            histograms=False,
            embedding_samples=0,
        )
        metrics = train(resolve_config(settings))["metrics"]
    flops = _train_flops(convae.build(get("keras-denoise").arch, (1, 28, 28)))
    return {"img_s": statistics.median(m["images_per_s"] for m in metrics[1:]), "train_mflop_per_img": flops / 1e6}


def _keras_flops() -> dict[str, float]:
    # The same layers in PyTorch, counted with FlopCounterMode (Keras has no counter of its own).
    return {"keras": _train_flops(_torch_model(False)) / 1e6, "keras-mirror": _train_flops(_torch_model(True)) / 1e6}


def _measure(python: str, side: str, args: argparse.Namespace) -> dict:
    cmd = [python, str(HERE), "--child", side, "--batch", str(args.batch)]
    cmd += ["--samples", str(args.samples), "--epochs", str(args.epochs)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _has_keras(python: str) -> bool:
    probe = "import keras, tensorflow"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keras-python", default=sys.executable, help="interpreter with keras and tensorflow")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--samples", type=int, default=4096, help="training images (default 4096)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements per side; medians")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is warm-up)")

    if args.child:
        x = _data(args.samples)
        if args.child.startswith("keras"):
            result = child_keras(x, args.batch, args.epochs, mirror=args.child == "keras-mirror")
        elif args.child == "torch-plain":
            result = child_torch_plain(x, args.batch, args.epochs)
        else:
            result = child_convae(x, args.batch, args.epochs)
        print(json.dumps(result))
        return

    sides = list(SIDES)
    if not _has_keras(args.keras_python):
        print(f"no keras/tensorflow in {args.keras_python}: Keras rows left out", file=sys.stderr)
        sides = [s for s in sides if not s.startswith("keras")]
    rates: dict[str, list[float]] = {s: [] for s in sides}
    flops: dict[str, float] = _keras_flops()
    for _ in range(args.repeats):
        for side in sides:
            python = args.keras_python if side.startswith("keras") else sys.executable
            result = _measure(python, side, args)
            rates[side].append(result["img_s"])
            flops.setdefault(side, result.get("train_mflop_per_img", float("nan")))
    import platform

    print(
        f"batch {args.batch}, {args.samples} images, {args.epochs} epochs per measurement (first not timed), "
        f"medians of {args.repeats} alternating runs; {platform.machine()} CPU, {os.cpu_count()} cores"
    )
    print("| side | img/s (median) | runs | training MFLOP/img |")
    print("|---|---|---|---|")
    for side in sides:
        runs = ", ".join(f"{r:.0f}" for r in rates[side])
        print(f"| {side} | {statistics.median(rates[side]):.0f} | {runs} | {flops[side]:.1f} |")
    print(json.dumps({s: round(statistics.median(rates[s]), 1) for s in sides}))


if __name__ == "__main__":
    main()
