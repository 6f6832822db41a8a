"""Where does a trained encoder lose linear separability? A linear probe at every layer.

    python research/probe_layers.py runs/fmnist-32-res-20261128-111648
    python research/probe_layers.py runs/fmnist-32-res-20261128-111648 --layers 8 --max-fit 60000
    python research/probe_layers.py runs/fmnist-32-res-20261128-111648 --layers 7 --pca 32

Fits the same probe as ``convae evaluate`` (`convae.inference.evaluate.linear_probe`: a
logistic regression on standardised features, fitted on a random
``--max-fit`` training samples with seed 0, scored on the test split) to the
run's input, to the output of each encoder block in turn, and to the code
(the last block's output). Prints one line per layer: its position, what it
is, its width and the probe's test accuracy. With ``--pca K``, each layer also
gets the probe on its top K principal components (PCA fitted on the same
training samples): what a K-d linear summary of the layer, kept by variance
rather than by class, leaves to the probe. Issue 7 asks for 0.86 on 32-d
codes; this shows how much of what the layers before the code hold the code
keeps (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convae.errors import ConvaeError
from convae.inference import evaluate
from convae.inference.run import Run, load
from convae.network.spec import describe_block


@torch.no_grad()
def features(run: Run, x: np.ndarray, position: int, batch_size: int = 1000) -> np.ndarray:
    """Each sample's features at ``position``, flattened: 0 the normalised input, i the i-th encoder block's output."""
    out = []
    for h in run._batches(x, batch_size):  # normalised on the run's device, as Run.encode feeds the model
        for block in run.model.encoder[:position]:
            h, _ = block(h)
        out.append(h.flatten(1).float().cpu().numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory written by `convae train`")
    parser.add_argument("--max-fit", type=int, default=20000, help="training samples the probes fit on (default 20000)")
    parser.add_argument(
        "--layers", default=None, help="comma-separated positions to probe (default all; 0 is the input)"
    )
    parser.add_argument(
        "--pca",
        type=int,
        default=None,
        metavar="K",
        help="also probe the top K principal components of each layer wider than K",
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.max_fit < 2:
        parser.error("--max-fit must be at least 2")
    if args.pca is not None and args.pca < 1:
        parser.error("--pca must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        run = load(args.run)
        _, x_fit, x_eval, y_fit, y_eval = evaluate.eval_splits(run)
    except (ConvaeError, OSError) as err:
        parser.error(str(err))
    if y_fit is None or y_eval is None:
        parser.error(f"{run.config.data} has no labels: the probe needs them")
    x_fit, y_fit = evaluate.fit_subset(x_fit, y_fit, args.max_fit)  # the subset `convae evaluate` fits on

    names = ["input"] + [describe_block(block) for block in run.model.blocks]
    names[-1] += "  (the code)"
    try:
        wanted = range(len(names)) if args.layers is None else sorted({int(i) for i in args.layers.split(",")})
    except ValueError:
        parser.error(f"--layers '{args.layers}': expected comma-separated integers")
    if not wanted or not all(0 <= i < len(names) for i in wanted):
        parser.error(f"--layers '{args.layers}': positions run from 0 (the input) to {len(names) - 1} (the code)")
    started = time.perf_counter()
    for i in wanted:  # one layer at a time: at 60,000 images an early block's features alone are several GB
        fit, held_out = features(run, x_fit, i), features(run, x_eval, i)
        accuracy = evaluate.linear_probe(fit, y_fit, held_out, y_eval)
        print(f"{i:>2}  {fit.shape[1]:>6}-d  probe {accuracy:.4f}  {names[i]}", flush=True)
        if args.pca is not None and args.pca < min(fit.shape):  # PCA needs more samples and features than K
            pca = PCA(args.pca, random_state=0).fit(fit)
            accuracy = evaluate.linear_probe(pca.transform(fit), y_fit, pca.transform(held_out), y_eval)
            print(f"{i:>2}  {args.pca:>6}-d  probe {accuracy:.4f}  PCA-{args.pca} of it", flush=True)
    print(f"{len(x_fit)} training samples, {len(x_eval)} evaluated, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
