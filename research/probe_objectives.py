"""Does a second objective on the codes raise the linear probe? An ablation for issue 7's probe target.

    python research/probe_objectives.py                                      # plain MSE, one view
    python research/probe_objectives.py --objective invariance --weight 0.01 --augment flip+shift:3
    python research/probe_objectives.py --objective contrastive --weight 0.1 --head 64 --augment flip+shift:3
    python research/probe_objectives.py --objective acai --weight 0.5
    python research/probe_objectives.py --augment shift:1 --target clean      # the shift as noise
    python research/probe_objectives.py --mask 0.5                            # masked patches as noise
    python research/probe_objectives.py --objective idec --weight 0.1 --clusters 10

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
  decodings of mixed codes, and the autoencoder is trained to fool it;
- ``l1``: the mean absolute code (sparse codes); ``uniformity``: Wang and
  Isola's (2020) log mean Gaussian potential of the normalised codes, which
  spreads them over the sphere;
- ``rotation``: RotNet's pretext task (Gidaris et al., 2018): each input is
  turned by a random multiple of 90 degrees, and an MLP on its code
  (code -> 256 -> 4) is trained to tell which (cross-entropy);
- ``idec``: after ``--epochs`` of MSE alone, ``--idec-epochs`` more with
  IDEC's clustering term (Guo et al., 2017): k-means centres of the codes
  (``--clusters``) and the KL divergence from the sharpened soft assignments
  to them, refreshed each epoch.

The two-view objectives reconstruct both views, so a step sees twice the
images; ``--crop S`` makes the views random resized crops (area S to 1,
aspect 3/4 to 4/3, and flips; 2-D inputs) instead of ``--augment``, and
``--jitter S`` distorts each view's brightness and contrast (SimCLR's colour
jitter of strength S, for grey images). Other
knobs: ``--target clean`` reconstructs the unaugmented image from one
augmented view (the augmentation as a denoising autoencoder's noise, so the
code need not keep the shift); with a two-view objective ``--target
original`` reconstructs the unaugmented images from themselves, encoded in
the same batch as the two views, and the term sees the views' codes only (so
the decoder learns the images the probe and the test MSE see), ``--loss bce`` or ``l1`` (the trainer's losses),
``--edges W`` (an MSE on pixel differences), ``--code-noise S`` (gaussian noise
on the codes in training), ``--mask R`` (hide a fraction R of the 4x4 patches
of each input and reconstruct them all: masked-image modelling as a denoising
autoencoder's noise).

Runs on a GPU where there is one (``--device``; bf16 autocast there as on
the CPU); the views are drawn on the CPU from one generator, so a seed gives
the same batches on either. Prints the test MSE and the accuracy of
`convae.inference.evaluate.linear_probe` (a logistic regression on standardised codes)
fitted on the codes of the first 20,000 training images (`convae evaluate`
fits on a random 20,000). ``--state FILE`` keeps the run's state after each
epoch and goes on from it, so a run too long for one sitting can be split
across calls (``--stop-after N`` epochs each) and ends with the figures of one
that never stopped. Of these objectives the trainer offers the contrastive
term on crops (``convae train --contrastive W``, the same loss and views);
benchmarks/RESULTS.md says what each gave.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import convae
from convae import checkpoint, presets
from convae.config import LOSSES
from convae.data import floats, load, split_validation
from convae.data.preprocess import augment as apply_augment
from convae.data.preprocess import jitter_brightness_contrast, resized_crops
from convae.errors import ConvaeError
from convae.inference.evaluate import linear_probe
from convae.parsers import Augment
from convae.runtime import pick_device
from convae.training.objectives import LOSS_FUNCTIONS, nt_xent, projection_head

OBJECTIVES = ("none", "invariance", "contrastive", "acai", "l1", "uniformity", "idec", "rotation")
TWO_VIEWS = ("invariance", "contrastive")
PENALTIES = ("l1", "uniformity")


def code_term(objective: str, z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    if objective == "invariance":

        def standardise(z: torch.Tensor) -> torch.Tensor:
            return (z - z.mean(0)) / (z.std(0) + 1e-4)

        return F.mse_loss(standardise(z1), standardise(z2))
    return nt_xent(z1, z2, tau)


def code_penalty(objective: str, z: torch.Tensor) -> torch.Tensor:
    z = z.float().flatten(1)
    if objective == "l1":
        return z.abs().mean()
    return torch.pdist(F.normalize(z, dim=1)).pow(2).mul(-2).exp().mean().log()  # uniformity, t = 2


def mask_patches(x: torch.Tensor, fraction: float, patch: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a random fraction of the patch x patch squares of each 2-D image, each image its own."""
    height, width = x.shape[-2:]
    grid = (len(x), 1, -(-height // patch), -(-width // patch))
    keep = (torch.rand(grid, generator=generator) >= fraction).to(x.device, x.dtype)
    return x * keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[..., :height, :width]


def encode_all(model: convae.AutoEncoder, images: torch.Tensor) -> torch.Tensor:
    """The flattened codes of many images (on the CPU), a thousand at a time on the model's device, in inference
    mode."""
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        return torch.cat([model.encode(c.to(device)).cpu() for c in images.split(1000)]).flatten(1)


def idec_finetune(
    model: convae.AutoEncoder, x: torch.Tensor, args: argparse.Namespace, generator: torch.Generator
) -> None:
    """IDEC (Guo et al., 2017): MSE plus args.weight times KL(P || Q), Q the Student-t soft assignments of the
    codes to k-means centres, P their sharpened square refreshed at each epoch."""
    from sklearn.cluster import KMeans

    kmeans = KMeans(args.clusters, n_init=4, random_state=args.seed).fit(encode_all(model, x[:20000]).numpy())
    device = next(model.parameters()).device
    centres = torch.nn.Parameter(torch.as_tensor(kmeans.cluster_centers_, dtype=torch.float32, device=device))
    optimizer = torch.optim.Adam([*model.parameters(), centres], lr=1e-4)

    def assignments(z: torch.Tensor) -> torch.Tensor:
        q = 1 / (1 + torch.cdist(z, centres).pow(2))
        return q / q.sum(1, keepdim=True)

    steps = len(x) // args.batch
    for epoch in range(args.idec_epochs):
        with torch.no_grad():
            q = assignments(encode_all(model, x).to(device))
            p = q.pow(2) / q.sum(0)
            p = p / p.sum(1, keepdim=True)
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = kl_total = 0.0
        for i in range(steps):
            index = order[i * args.batch : (i + 1) * args.batch]
            images = x[index].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                z, sizes, switches = model._encode(images.contiguous(memory_format=torch.channels_last))
                out = model._decode(z, sizes, switches)
            mse = F.mse_loss(out.float(), images)
            kl = F.kl_div(assignments(z.float().flatten(1)).log(), p[index], reduction="batchmean")
            optimizer.zero_grad()
            (mse + args.weight * kl).backward()
            optimizer.step()
            total, kl_total = total + float(mse.detach()), kl_total + float(kl.detach())
        print(f"idec epoch {epoch + 1}  loss {total / steps:.5f}  kl {kl_total / steps:.4f}", flush=True)


def reconstruction(kind: str, out: torch.Tensor, target: torch.Tensor, edges: float) -> torch.Tensor:
    loss = LOSS_FUNCTIONS[kind](out, target)  # the trainer's own losses
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
        choices=("view", "clean", "original"),
        default="view",
        help="reconstruct the augmented view (default) or the unaugmented image: the augmentation as the noise "
        "of a denoising autoencoder (clean), or, with a two-view objective, the unaugmented images from "
        "themselves, encoded beside the two views, whose codes only the term sees (original)",
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
    parser.add_argument(
        "--crop",
        type=float,
        default=0.0,
        help="make the two views random resized crops of area CROP..1, and flips, instead of --augment (default 0)",
    )
    parser.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="distort each view's brightness and contrast with this strength, as SimCLR's colour jitter "
        "(two-view objectives; default 0)",
    )
    parser.add_argument(
        "--mask", type=float, default=0.0, help="hide this fraction of each input's 4x4 patches (default 0)"
    )
    parser.add_argument("--clusters", type=int, default=10, help="k-means centres for idec (default 10)")
    parser.add_argument("--idec-epochs", type=int, default=3, help="epochs with idec's term (default 3)")
    parser.add_argument("--arch", default=presets.DEFAULT_PRESET, help="a preset name or an architecture string")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--samples", type=int, default=None, help="train on the first N training images")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="weights from SEED, batches and augmentation from SEED+1")
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="save the run's state to this file after each epoch, and go on from it where it exists: a run split "
        "across calls ends as one that never stopped",
    )
    parser.add_argument(
        "--stop-after", type=int, default=None, help="with --state: train at most this many epochs in this call"
    )
    args = parser.parse_args()
    if args.stop_after is not None and (args.state is None or args.stop_after < 1):
        parser.error("--stop-after takes a number of epochs >= 1, and --state to keep them in")
    try:
        augment = Augment.parse(args.augment)
    except ConvaeError as err:
        parser.error(str(err))
    if args.target == "clean" and (augment is None or args.objective != "none"):
        parser.error(
            "--target clean reconstructs the unaugmented image of one augmented view: give --augment, no --objective"
        )
    if args.target == "original" and args.objective not in TWO_VIEWS:
        parser.error("--target original reconstructs the images beside two views: give a two-view --objective")
    if args.objective in TWO_VIEWS and augment is None and not args.crop:
        parser.error(f"--objective {args.objective} compares two augmented views: give --augment or --crop")
    if args.crop and args.objective not in TWO_VIEWS:
        parser.error("--crop makes the two views of --objective invariance or contrastive")
    if args.jitter and args.objective not in TWO_VIEWS:
        parser.error("--jitter distorts the two views of --objective invariance or contrastive")
    if not 0 <= args.jitter <= 1:
        parser.error("--jitter takes a strength in [0, 1]")
    if not 0 <= args.crop < 1 or not 0 <= args.mask < 1:
        parser.error("--crop and --mask take a fraction in [0, 1)")
    if args.objective == "idec" and (args.clusters < 2 or args.idec_epochs < 1):
        parser.error("idec needs --clusters >= 2 and --idec-epochs >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        device = pick_device(args.device)
        dataset = load(args.data, data_dir=args.data_dir)
        spec = presets.resolve(args.arch)
    except ConvaeError as err:
        parser.error(str(err))
    if (args.crop or args.mask) and dataset.x_train.ndim != 4:
        parser.error("--crop and --mask work on 2-D images")
    if args.objective == "rotation" and (dataset.x_train.ndim != 4 or len(set(dataset.x_train.shape[2:])) != 1):
        parser.error("--objective rotation turns square 2-D images")
    if dataset.y_train is None:
        parser.error(f"{args.data} has no labels: the probe needs them")
    x, y = torch.as_tensor(floats(dataset.x_train[: args.samples])), dataset.y_train[: args.samples]
    if dataset.x_test is not None:
        x_test, y_test = torch.as_tensor(floats(dataset.x_test)), dataset.y_test
    else:  # digits: a held-out fifth stands in for a test split, as for a validation split
        fit, held_out = split_validation(len(x), 0.2, seed=0)
        x, x_test, y, y_test = x[fit], x[held_out], y[fit], y[held_out]
    steps_per_epoch = len(x) // args.batch if args.batch > 0 else 0
    if args.epochs < 1 or steps_per_epoch < 1:
        parser.error(f"need --epochs >= 1 and --batch between 1 and the {len(x)} training images")
    torch.manual_seed(args.seed)
    try:
        model = convae.build(spec, x.shape[1:]).to(device, memory_format=torch.channels_last)
    except ConvaeError as err:
        parser.error(str(err))
    code_size = math.prod(model.code_shape)
    outputs = 4 if args.objective == "rotation" else args.head  # rotation's head tells one of four turns
    head = (projection_head(code_size, outputs) if outputs else torch.nn.Identity()).to(device)
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=args.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed + 1)
    two_views = args.objective in TWO_VIEWS
    if args.objective == "acai":  # the critic: the encoder's layers, its score the mean of its code
        critic = convae.build(spec, x.shape[1:]).to(device, memory_format=torch.channels_last)
        critic_optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)

        def critic_score(images: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return critic._encode(images)[0].float().flatten(1).mean(1)

    # what makes two calls one run: every setting but where it runs and where its state goes
    run_settings = {k: v for k, v in vars(args).items() if k not in ("state", "stop_after", "threads", "device")}
    parts = {"model": model, "head": head, "optimizer": optimizer, "schedule": schedule}
    if args.objective == "acai":
        parts |= {"critic": critic, "critic_optimizer": critic_optimizer}
    first_epoch, elapsed = 0, 0.0
    if args.state is not None and args.state.exists():
        state = torch.load(args.state, weights_only=True)
        if state["settings"] != run_settings:
            changed = sorted(k for k in run_settings if state["settings"].get(k) != run_settings[k])
            parser.error(f"{args.state} holds a run with other settings ({', '.join(changed)}): give another --state")
        for name, part in parts.items():
            part.load_state_dict(state[name])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        first_epoch, elapsed = state["epoch"], state["elapsed"]
        print(f"resumed from {args.state} after epoch {first_epoch}", flush=True)
    started = time.perf_counter() - elapsed
    for epoch in range(first_epoch, args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = term_total = 0.0
        for i in range(steps_per_epoch):
            images = x[order[i * args.batch : (i + 1) * args.batch]]
            if two_views and args.crop:
                batch = torch.cat([resized_crops(images, args.crop, generator) for _ in range(2)])
            elif two_views:
                batch = torch.cat([apply_augment(augment, images, 0.0, generator) for _ in range(2)])
            elif augment is not None:
                batch = apply_augment(augment, images, 0.0, generator)
            else:
                batch = images
            if args.jitter:
                batch = jitter_brightness_contrast(batch, args.jitter, 0.0, 1.0, generator)
            if args.target == "original":  # the views feed the term only; the images themselves are reconstructed
                batch = torch.cat([images, batch])
            if args.objective == "rotation":
                turns = torch.randint(0, 4, (len(batch),), generator=generator)
                batch = batch.clone()
                for k in range(1, 4):
                    batch[turns == k] = batch[turns == k].rot90(k, (-2, -1))
            # the views are drawn on the CPU, from one generator, so a seed gives the same batches on any device;
            # each goes to the device once
            batch = batch.to(device)
            target = images.to(device) if args.target in ("clean", "original") else batch
            if args.mask:  # the noise of a denoising autoencoder: the target keeps the hidden patches
                batch = mask_patches(batch, args.mask, 4, generator)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                z, sizes, switches = model._encode(batch)
                if args.code_noise:
                    noise = torch.randn(z.shape, generator=generator, dtype=torch.float32).to(device)
                    z = z + args.code_noise * z.detach().float().std(0) * noise
                if args.target == "original":
                    kept = len(images)
                    out = model._decode(z[:kept], sizes, [s if s is None else s[:kept] for s in switches])
                else:
                    out = model._decode(z, sizes, switches)
            loss = reconstruction(args.loss, out.float(), target, args.edges)
            if two_views:
                views = z[len(images) :] if args.target == "original" else z
                term = code_term(args.objective, *head(views.float().flatten(1)).chunk(2), args.tau)
            elif args.objective == "rotation":
                term = F.cross_entropy(head(z.float().flatten(1)), turns.to(device))
            elif args.objective in PENALTIES:
                term = code_penalty(args.objective, z)
            elif args.objective == "acai":
                # ACAI (Berthelot et al., 2019): decode a mix of two codes and train the autoencoder to make the
                # critic believe it is no mix (score 0); the critic learns to tell the mixing coefficient
                alpha = 0.5 * torch.rand(len(z), 1, generator=generator).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    mixed = model._decode(alpha * z + (1 - alpha) * z.roll(1, 0), sizes, switches)
                term = critic_score(mixed).pow(2).mean()
            else:  # MSE alone, or idec, whose term comes after these epochs
                term = torch.zeros((), device=device)
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
        if args.state is not None:
            state = {name: part.state_dict() for name, part in parts.items()}
            state |= {"settings": run_settings, "epoch": epoch + 1, "elapsed": time.perf_counter() - started}
            state |= {"generator": generator.get_state(), "torch_rng": torch.get_rng_state()}
            # a call killed while saving leaves the last whole state
            checkpoint.atomic_write(args.state, functools.partial(torch.save, state))
            if args.stop_after is not None and epoch + 1 - first_epoch >= args.stop_after and epoch + 1 < args.epochs:
                print(f"stopped after epoch {epoch + 1} of {args.epochs}; the same command goes on from {args.state}")
                return
    if args.objective == "idec":
        idec_finetune(model, x, args, generator)
    codes_fit, codes_test = encode_all(model, x[:20000]).numpy(), encode_all(model, x_test).numpy()
    with torch.no_grad():
        x_hat = torch.cat([model(c.to(device)).cpu() for c in x_test.split(1000)])
    mse = float(F.mse_loss(x_hat, x_test))
    probe = linear_probe(codes_fit, y[:20000], codes_test, np.asarray(y_test))
    print(
        f"objective {args.objective}  weight {args.weight if args.objective != 'none' else 0}  "
        f"augment {augment or 'none'}  head {args.head}  target {args.target}  loss {args.loss}  edges {args.edges:g}  "
        f"code noise {args.code_noise:g}  crop {args.crop:g}  jitter {args.jitter:g}  mask {args.mask:g}  "
        f"seed {args.seed}  epochs {args.epochs}  device {device}  "
        f"test MSE {mse:.5f}  probe {probe:.4f}  {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
