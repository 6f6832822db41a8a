"""Does bf16 autocast turn the loss NaN for strided convolutions down to 1x1 maps? (issue 34)

    python3 benchmarks/bf16_sweep.py                 # the digits, 30 steps per run
    python3 benchmarks/bf16_sweep.py --data fashion-mnist --steps 40

Trains `conv(4,3,stride=2)` four and five times then `dense(4)` through
`convae.training.train.train` with bf16 autocast on, Adam at a constant 1e-3 (the
defaults when the NaN was seen), for each seed and batch size, and prints each
run's outcome: its last training loss, or the one-line error of a non-finite loss.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convae.config import resolve_config
from convae.errors import ConvaeError
from convae.training.train import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print("convs  seed  batch  outcome")
    for convs, seed, batch in itertools.product((4, 5), range(args.seeds), (32, 128)):
        losses = []

        def stop(step):
            if step == args.steps:
                raise KeyboardInterrupt

        arch = " ".join(["conv(4,3,stride=2)"] * convs) + " dense(4)"
        with tempfile.TemporaryDirectory() as tmp:
            config = resolve_config(
                dict(
                    data=args.data,
                    arch=arch,
                    out=f"{tmp}/run",
                    histograms=False,
                    optimizer="adam",
                    schedule="constant",
                    lr=1e-3,
                    epochs=1000,
                    seed=seed,
                    batch_size=batch,
                    quiet=True,
                    amp=True,
                )
            )
            try:
                train(config, on_step=stop, on_epoch=losses.append)
                outcome = "finished"
            except KeyboardInterrupt:
                last = f"; last epoch's loss {losses[-1]['train_loss']:.5f}" if losses else ""
                outcome = f"{args.steps} steps, finite{last}"
            except ConvaeError as err:
                outcome = f"ERROR {err}"
        print(f"{convs:>5}  {seed:>4}  {batch:>5}  {outcome}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
