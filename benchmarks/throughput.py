"""Training throughput: a plain PyTorch loop against convae's trainer, side by side in one process.

    python benchmarks/throughput.py --quick          # CPU, a few minutes
    python benchmarks/throughput.py                  # full: bigger subset, more steps

For each architecture and batch size it times
  baseline: DataLoader over a TensorDataset, float32, eager, torch.optim.Adam, BCE loss,
            loss.item() each step (as a typical user writes it);
  convae:   convae.training.train.train(), the function `convae train` calls, with its
            defaults for the device (BCE loss so that both do the same work).
Both train the same architecture (built by convae.build) on the same data:
Fashion-MNIST when it is on this machine, else random data of that shape.

First it measures the machine's practical peak in the same process: a large
float32 matrix multiply (and a bf16 one where the CPU or GPU does bf16
natively), and names the processor (model, SIMD level, native bf16 or not).
Each case's achieved FLOP/s (convae's side) is then given as a fraction of
that peak (``peak_fraction``; of the bf16 peak when convae trained under bf16
autocast), beside its ratio to the plain loop. It prints a table, then one
last line of JSON (a list, one object per case).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_set_flag, parse_set

import convae
from convae.config import resolve_config
from convae.data import floats, load
from convae.errors import ConvaeError
from convae.runtime import cpu_has_native_bf16, pick_device
from convae.training.train import train

ARCHS = {
    # keras.io "Convolutional autoencoder for image denoising", mirrored by convae.
    "keras": "conv(32,3) relu maxpool(2) conv(32,3) relu maxpool(2)",
    # A bottleneck model with batch norm and a 32-d code (the default preset).
    "bottleneck": "conv(32,3,stride=2) bn relu conv(64,3,stride=2) bn relu conv(128,3,stride=2) bn relu dense(32)",
    # A wide model: 64-128-256 channels, 128-d code.
    "wide": "conv(64,3,stride=2) bn relu conv(128,3,stride=2) bn relu conv(256,3,stride=2) bn relu dense(128)",
}


def fashion_or_random(n: int) -> tuple[np.ndarray, str]:
    try:
        x = floats(load("fashion-mnist", download=False).x_train[:n])
        return x, "fashion-mnist"
    except ConvaeError:
        rng = np.random.default_rng(0)
        return rng.random((n, 1, 28, 28), dtype=np.float32), "random"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def cpu_class() -> dict:
    """The processor: its model name, the SIMD level PyTorch dispatches to, and native bf16 or not
    (as convae decides it: a process run with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``
    measures the AVX2 kernels, without bf16, on a newer CPU)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf16 = bool(flags & {"avx512_bf16", "amx_bf16"}) and cpu_has_native_bf16()  # False under an ISA cap
    return {"model": model, "simd": torch.backends.cpu.get_cpu_capability(), "native_bf16": bf16}


def machine_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Practical peak FLOP/s: the best of repeated n x n matrix multiplies in ``dtype`` (what the
    BLAS or cuBLAS reaches on this machine, with this process's threads)."""
    a = torch.rand(n, n, device=device, dtype=dtype)
    b = torch.rand(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best, spent = float("inf"), 0.0
    while spent < seconds:
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return 2 * n**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(arch: str, batch: int) -> float:
    model = convae.build(arch, (1, 28, 28))
    x = torch.rand(batch, 1, 28, 28)
    counter = FlopCounterMode(display=False)
    with counter:
        F.binary_cross_entropy(model(x), x).backward()
    return counter.get_total_flops() / batch


def baseline(arch: str, x: np.ndarray, batch: int, epochs: int, device: torch.device) -> tuple[float, float]:
    """(images per second over the epochs after the first, mean loss of the last epoch) of the plain loop."""
    torch.manual_seed(0)
    model = convae.build(arch, (1, 28, 28)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(torch.as_tensor(x)), batch_size=batch, shuffle=True, drop_last=True)
    rates = []
    for epoch in range(epochs):
        sync(device)
        start, seen, total = time.perf_counter(), 0, 0.0
        for (xb,) in loader:
            xb = xb.to(device)
            loss = F.binary_cross_entropy(model(xb), xb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            seen += len(xb)
        sync(device)
        if epoch > 0:
            rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates), total / max(len(loader), 1)


def write_npy(path: str, x: np.ndarray, source: str) -> str:
    """The images as the `npy:` file convae trains on (Fashion-MNIST back to its uint8 pixels)."""
    np.save(path, (x * 255).round().astype(np.uint8) if source == "fashion-mnist" else x)
    return path


def trainer_settings(
    arch: str, data_file: str, batch: int, epochs: int, device: torch.device, out: str, extra: dict | None = None
) -> dict:
    """convae's training settings for a speed measurement: the plain loop's BCE and Adam at a constant
    1e-3, all data trained on, no summaries beyond scalars; ``extra`` on top."""
    settings = dict(
        data=f"npy:{data_file}",
        arch=arch,
        epochs=epochs,
        batch_size=batch,
        loss="bce",
        optimizer="adam",
        schedule="constant",
        lr=1e-3,
        val_fraction=0.0,
        device=str(device),
        out=out,
        quiet=True,
        histograms=False,
        embedding_samples=0,
    )
    return {**settings, **(extra or {})}


def convae_trainer(
    arch: str,
    data_file: str,
    batch: int,
    epochs: int,
    device: torch.device,
    out: str,
    nproc: int = 1,
    extra: dict | None = None,
) -> tuple[float, float]:
    """(images per second over the epochs after the first, mean training loss of the last epoch)."""
    settings = trainer_settings(arch, data_file, batch, epochs, device, out, extra)
    if nproc > 1:
        # Multi-process mode: the same settings through torchrun, as users run it.
        flags = [f for k, v in settings.items() for f in (f"--{k.replace('_', '-')}", str(v).lower())]
        flags.remove("--quiet")
        flags.remove("true")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        subprocess.run([*cmd, "-m", "convae", "train", *flags, "--quiet"], check=True, capture_output=True)
        metrics = json.loads(Path(out, "metrics.json").read_text())
    else:
        metrics = train(resolve_config(settings))["metrics"]
    return statistics.median(m["images_per_s"] for m in metrics[1:]), metrics[-1]["train_loss"]


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # Process-wide peak resident memory (Linux reports kilobytes).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small subset, few epochs (CPU: a few minutes)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated: " + ", ".join(ARCHS))
    parser.add_argument("--batches", default="128,1024")
    parser.add_argument("--samples", type=int, help="training images (default 6144 quick, 60000 full)")
    parser.add_argument("--epochs", type=int, help="epochs per measurement; the first is warm-up (default 2)")
    parser.add_argument("--nproc", type=int, default=1, help="convae side under torchrun with N processes")
    parser.add_argument("--repeats", type=int, default=3, help="alternating measurements per side; medians (default 3)")
    add_set_flag(parser, "convae-side settings beyond its defaults, e.g. compile=reduce-overhead")
    args = parser.parse_args()
    extra = parse_set(parser, args.set)

    device = pick_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 peak of true fp32
        native_bf16 = torch.cuda.is_bf16_supported()
        processor = {"model": torch.cuda.get_device_name(device), "simd": "cuda", "native_bf16": native_bf16}
    else:
        processor = cpu_class()
    side = 4096 if device.type == "cuda" else 2048
    peak32 = machine_peak(device, torch.float32, side)
    peak16 = machine_peak(device, torch.bfloat16, side) if processor["native_bf16"] else None
    bf16 = "native" if processor["native_bf16"] else "no native"
    print(
        f"processor: {processor['model']} ({processor['simd']}, {bf16} bf16); "
        f"measured peak {peak32 / 1e9:.0f} GFLOP/s fp32" + (f", {peak16 / 1e9:.0f} bf16" if peak16 else "")
    )
    samples = args.samples or (4096 if args.quick else 60000)
    epochs = args.epochs or 2
    x, source = fashion_or_random(samples)
    print(
        f"device: {device_name(device)}; torch {torch.__version__}; data: {source}, {len(x)} images; "
        f"{epochs} epochs per measurement, the first not timed" + (f"; convae settings: {extra}" if extra else "")
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_file = write_npy(os.path.join(tmp, "x.npy"), x, source)
        for name in args.archs.split(","):
            arch = ARCHS[name]
            for batch in (int(b) for b in args.batches.split(",")):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                # Alternate the two sides and take medians: shared machines drift.
                bases, ourses = [], []
                for r in range(args.repeats):
                    bases.append(baseline(arch, x, batch, epochs, device))
                    out = os.path.join(tmp, f"{name}-{batch}-{r}")
                    ourses.append(convae_trainer(arch, data_file, batch, epochs, device, out, args.nproc, extra))
                base, ours = statistics.median(r for r, _ in bases), statistics.median(r for r, _ in ourses)
                flops = flops_per_image(arch, min(batch, 128))
                amp = json.loads(Path(tmp, f"{name}-{batch}-0", "config.json").read_text())["amp"]
                peak = peak16 if amp and peak16 else peak32
                rows.append(
                    {
                        "arch": name,
                        "batch": batch,
                        "device": device_name(device) + (f" x {args.nproc} processes" if args.nproc > 1 else ""),
                        "baseline_img_s": round(base, 1),
                        "convae_img_s": round(ours, 1),
                        "ratio": round(ours / base, 3),
                        "train_gflop_per_img": round(flops / 1e9, 4),
                        "tflops": round(flops * ours / 1e12, 4),
                        "peak_fraction": round(flops * ours / peak, 3),
                        "peak_gflops": round(peak / 1e9, 1),
                        "amp": amp,
                        "cpu": processor,
                        "peak_mem_mb": round(peak_memory_mb(device), 1),
                        # Last-epoch training loss (BCE) of the last repeat: equal within noise if
                        # convae's speed settings leave what is learned alone.
                        "baseline_loss": round(bases[-1][1], 5),
                        "convae_loss": round(ourses[-1][1], 5),
                        "convae_settings": extra,
                    }
                )
                r = rows[-1]
                print(
                    f"{name:<11} batch {batch:<5} baseline {r['baseline_img_s']:>9.0f} img/s   "
                    f"convae {r['convae_img_s']:>9.0f} img/s   x{r['ratio']:.2f}   "
                    f"{r['train_gflop_per_img'] * 1e3:.1f} MFLOP/img  {r['tflops'] * 1e3:.1f} GFLOP/s "
                    f"({r['peak_fraction']:.0%} of peak)  "
                    f"peak {r['peak_mem_mb']:.0f} MB  loss {r['baseline_loss']:.4f} / {r['convae_loss']:.4f}",
                    flush=True,
                )
    print(
        json.dumps(
            [
                {
                    k: r[k]
                    for k in (
                        "arch",
                        "batch",
                        "device",
                        "baseline_img_s",
                        "convae_img_s",
                        "ratio",
                        "peak_fraction",
                        "peak_gflops",
                        "tflops",
                        "amp",
                        "cpu",
                        "peak_mem_mb",
                        "baseline_loss",
                        "convae_loss",
                        "convae_settings",
                    )
                }
                for r in rows
            ]
        )
    )


if __name__ == "__main__":
    main()
