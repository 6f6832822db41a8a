"""Does a second objective on the codes raise the linear probe? An ablation for issue 7's probe target.

    python benchmarks/probe_objectives.py                                      # plain MSE, one view
    python benchmarks/probe_objectives.py --objective invariance --weight 0.01 --augment flip+shift:3
    python benchmarks/probe_objectives.py --objective contrastive --weight 0.1 --head 64 --augment flip+shift:3
    python benchmarks/probe_objectives.py --objective acai --weight 0.5
    python benchmarks/probe_objectives.py --augment shift:1 --target clean      # the shift as noise

Trains the default preset's layers (``fmnist-32``) with AdamW (weight decay
0.01) and a one-cycle schedule, bf16 autocast, batch 128, and adds to the
reconstruction loss ``weight`` times a term on the codes:

- ``invariance``: MSE between the codes of two augmented views of each image,
  each standardised over the batch (so shrinking the codes cannot lower it);
- ``contrastive``: SimCLR's NT-Xent on the cosine similarities of the two
  views' codes (temperature ``--tau``), the other images of the batch as
  negatives; with ``--head N`` on an MLP projection of the codes, as SimCLR;
- ``acai``: the adversarially constrained interpolation of Berthelot et al.
  (2019): a critic (the encoder's layers) learns the mixing coefficient of
  decodings of mixed codes, and the autoencoder is trained to fool it.

The two-view objectives reconstruct both views, so a step sees twice the
images. Other knobs: ``--target clean`` reconstructs the unaugmented image from
one augmented view (the augmentation as a denoising autoencoder's noise, so the
code need not keep the shift), ``--loss bce`` or ``l1`` (the trainer's losses),
``--edges W`` (an MSE on pixel differences), ``--code-noise S`` (gaussian noise
on the codes in training).

Prints the test MSE and the accuracy of `convae.evaluate.linear_probe` (a
logistic regression on standardised codes) fitted on the codes of the first
20,000 training images (`convae evaluate` fits on a random 20,000). The
trainer offers none of these: none raised the probe for good
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import convae
from convae import presets
from convae.data import load, split_validation
from convae.errors import ConvaeError
from convae.evaluate import linear_probe
from convae.preprocess import Augment
from convae.train import LOSSES, _loss_fn

OBJECTIVES = ("none", "invariance", "contrastive", "acai")
TWO_VIEWS = ("invariance", "contrastive")


def code_term(objective: str, z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    if objective == "invariance":

        def standardise(z: torch.Tensor) -> torch.Tensor:
            return (z - z.mean(0)) / (z.std(0) + 1e-4)

        return F.mse_loss(standardise(z1), standardise(z2))
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    sim = (z @ z.T / tau).fill_diagonal_(float("-inf"))  # a sample is not its own positive
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, positives)


def reconstruction(kind: str, out: torch.Tensor, target: torch.Tensor, edges: float) -> torch.Tensor:
    loss = _loss_fn(kind)(out, target)  # the trainer's own losses
    if edges:
        for dim in range(2, out.dim()):  # differences along each spatial axis: the edges a class is told by
            loss = loss + edges * F.mse_loss(out.diff(dim=dim), target.diff(dim=dim))
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", choices=OBJECTIVES, default="none")
    parser.add_argument("--weight", type=float, default=0.01, help="weight of the code term (default 0.01)")
    parser.add_argument("--tau", type=float, default=0.5, help="contrastive temperature (default 0.5)")
    parser.add_argument(
        "--head",
        type=int,
        default=0,
        help="compute the code term on an MLP projection (code -> 256 -> N) of the codes, as SimCLR does, "
        "instead of on the codes themselves (default 0: no head)",
    )
    parser.add_argument("--augment", default=None, help="flip, shift:N or flip+shift:N (required with an objective)")
    parser.add_argument(
        "--target",
        choices=("view", "clean"),
        default="view",
        help="reconstruct the augmented view (default) or the unaugmented image: the augmentation as the noise "
        "of a denoising autoencoder",
    )
    parser.add_argument("--loss", choices=LOSSES, default="mse", help="reconstruction loss (default mse)")
    parser.add_argument(
        "--edges",
        type=float,
        default=0.0,
        help="weight of an MSE on horizontal and vertical pixel differences added to the loss (default 0)",
    )
    parser.add_argument(
        "--code-noise",
        type=float,
        default=0.0,
        help="gaussian noise on the codes in training, in units of each code's batch standard deviation (default 0)",
    )
    parser.add_argument("--arch", default=presets.DEFAULT_PRESET, help="a preset name or an architecture string")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--samples", type=int, default=None, help="train on the first N training images")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="weights from SEED, batches and augmentation from SEED+1")
    args = parser.parse_args()
    try:
        augment = Augment.parse(args.augment)
    except ConvaeError as err:
        parser.error(str(err))
    if args.target == "clean" and (augment is None or args.objective != "none"):
        parser.error(
            "--target clean reconstructs the unaugmented image of one augmented view: give --augment, no --objective"
        )
    if args.objective in TWO_VIEWS and augment is None:
        parser.error(f"--objective {args.objective} compares two augmented views: give --augment")
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        dataset = load(args.data, data_dir=args.data_dir)
        spec = presets.resolve(args.arch)
    except ConvaeError as err:
        parser.error(str(err))
    if dataset.y_train is None:
        parser.error(f"{args.data} has no labels: the probe needs them")
    x, y = torch.as_tensor(dataset.x_train[: args.samples]), dataset.y_train[: args.samples]
    if dataset.x_test is not None:
        x_test, y_test = torch.as_tensor(dataset.x_test), dataset.y_test
    else:  # digits: a held-out fifth stands in for a test split, as for a validation split
        fit, held_out = split_validation(len(x), 0.2, seed=0)
        x, x_test, y, y_test = x[fit], x[held_out], y[fit], y[held_out]
    steps_per_epoch = len(x) // args.batch if args.batch > 0 else 0
    if args.epochs < 1 or steps_per_epoch < 1:
        parser.error(f"need --epochs >= 1 and --batch between 1 and the {len(x)} training images")
    torch.manual_seed(args.seed)
    try:
        model = convae.build(spec, x.shape[1:]).to(memory_format=torch.channels_last)
    except ConvaeError as err:
        parser.error(str(err))
    code_size = math.prod(model.code_shape)
    head = (
        torch.nn.Sequential(torch.nn.Linear(code_size, 256), torch.nn.ReLU(), torch.nn.Linear(256, args.head))
        if args.head
        else torch.nn.Identity()
    )
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=args.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed + 1)
    two_views = args.objective in TWO_VIEWS
    if args.objective == "acai":  # the critic: the encoder's layers, its score the mean of its code
        critic = convae.build(spec, x.shape[1:]).to(memory_format=torch.channels_last)
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)

        def critic_score(images: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return critic._encode(images)[0].float().flatten(1).mean(1)

    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = term_total = 0.0
        for i in range(steps_per_epoch):
            images = x[order[i * args.batch : (i + 1) * args.batch]]
            if two_views:
                batch = torch.cat([augment.apply(images, 0.0, generator), augment.apply(images, 0.0, generator)])
            elif augment is not None:
                batch = augment.apply(images, 0.0, generator)
            else:
                batch = images
            target = images if args.target == "clean" else batch
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                z, sizes, switches = model._encode(batch)
                if args.code_noise:
                    noise = torch.randn(z.shape, generator=generator, dtype=torch.float32)
                    z = z + args.code_noise * z.detach().float().std(0) * noise
                out = model._decode(z, sizes, switches)
            loss = reconstruction(args.loss, out.float(), target, args.edges)
            if args.objective == "acai":
                # ACAI (Berthelot et al., 2019): decode a mix of two codes and train the autoencoder to make the
                # critic believe it is no mix (score 0); the critic learns to tell the mixing coefficient
                alpha = 0.5 * torch.rand(len(z), 1, generator=generator)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    mixed = model._decode(alpha * z + (1 - alpha) * z.roll(1, 0), sizes, switches)
                term = critic_score(mixed).pow(2).mean()
                loss = loss + args.weight * term
                term_total += float(term.detach())
            if two_views:
                term = code_term(args.objective, *head(z.float().flatten(1)).chunk(2), args.tau)
                loss = loss + args.weight * term
                term_total += float(term.detach())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
            if args.objective == "acai":
                blend = 0.2 * batch + 0.8 * out.detach()  # a realistic reconstruction the critic should score 0
                scores = critic_score(torch.cat([mixed.detach(), blend]))
                critic_loss = (scores[: len(z)] - alpha.squeeze(1)).pow(2).mean() + scores[len(z) :].pow(2).mean()
                critic_optimizer.zero_grad()
                critic_loss.backward()
                critic_optimizer.step()
        print(
            f"epoch {epoch + 1}  loss {total / steps_per_epoch:.5f}  code term {term_total / steps_per_epoch:.4f}  "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
    model.eval()
    with torch.no_grad():
        x_hat = torch.cat([model(c) for c in x_test.split(1000)])
        codes_fit = torch.cat([model.encode(c) for c in x[:20000].split(1000)]).numpy()
        codes_test = torch.cat([model.encode(c) for c in x_test.split(1000)]).numpy()
    mse = float(F.mse_loss(x_hat, x_test))
    probe = linear_probe(codes_fit, y[:20000], codes_test, np.asarray(y_test))
    print(
        f"objective {args.objective}  weight {args.weight if args.objective != 'none' else 0}  "
        f"augment {augment or 'none'}  head {args.head}  target {args.target}  loss {args.loss}  edges {args.edges:g}  "
        f"code noise {args.code_noise:g}  seed {args.seed}  "
        f"epochs {args.epochs}  test MSE {mse:.5f}  probe {probe:.4f}  {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
