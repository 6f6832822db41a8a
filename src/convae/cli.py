"""Command line: parse arguments, build a config, call one library function.

User mistakes (``ConvaeError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convae.errors import ConvaeError


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,28,28") from None
    if not shape:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,28,28")
    return shape


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", choices=("sigmoid", "identity", "tanh"), default="sigmoid", help="output activation")
    p.add_argument("--tied", action="store_true", help="decoder reuses the encoder's weights, transposed")
    p.add_argument(
        "--upsample", choices=("transpose", "resize"), default="transpose", help="transposed conv or resize+conv"
    )


def _cmd_summary(args: argparse.Namespace) -> int:
    from convae import presets
    from convae.model import build

    model = build(
        presets.resolve(args.arch), args.input_shape, output=args.output, tied=args.tied, upsample=args.upsample
    )
    print(model.summary())
    return 0


def _image_size(text: str) -> list[int]:
    shape = list(_shape(text))
    if len(shape) == 1:
        shape *= 2
    if len(shape) != 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not an image size like 28 or 32,48")
    return shape


def _threads(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of threads")
    return int(text)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of integers like 0 or 1,7") from None


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is not true or false")


def _compile(text: str) -> bool | str:
    from convae.train import COMPILE_MODES

    if text in COMPILE_MODES:
        return text
    try:
        return _bool(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"'{text}' is not true, false or one of {', '.join(COMPILE_MODES)}") from None


# flag, type or action, help, choices. Every flag is also a key of a --config file.
TRAIN_FLAGS: list[tuple[str, Any, str, tuple | None]] = [
    ("--data", str, "fashion-mnist, mnist, digits, folder:PATH or npy:PATH (default fashion-mnist)", None),
    ("--data-dir", str, "where to look for dataset files first", None),
    ("--channels", int, "folder images: 1 (grayscale) or 3 (RGB)", (1, 3)),
    ("--image-size", _image_size, "folder images: resize and centre-crop to H,W", None),
    ("--val-fraction", float, "held-out share for validation (default 0.1; 0: monitor 10,000 training images)", None),
    ("--normalize", str, "input preparation (default unit)", ("none", "unit", "standardize", "zca")),
    ("--zca-epsilon", float, "ZCA whitening epsilon (default 0.01)", None),
    ("--noise", str, "denoising: gaussian:0.3, masking:0.25 or saltpepper:0.1", None),
    ("--augment", str, "training-time augmentation: flip, shift:N or flip+shift:N", None),
    ("--exclude-classes", _int_list, "labels left out of training, e.g. 0 or 1,7 (anomaly detection)", None),
    ("--arch", str, "preset name or architecture string (default fmnist-32; see `convae presets`)", None),
    ("--output", str, "output activation (default: sigmoid for unit, else identity)", ("sigmoid", "identity", "tanh")),
    ("--tied", _bool, "decoder reuses encoder weights (true/false)", None),
    ("--upsample", str, "transposed conv or resize+conv", ("transpose", "resize")),
    ("--loss", str, "reconstruction loss (default mse)", ("mse", "bce", "l1")),
    (
        "--contrastive",
        float,
        "weight of SimCLR's NT-Xent on the codes of two crops of each image (default 0: off)",
        None,
    ),
    ("--contrastive-crop", float, "smallest crop of the contrastive views, a fraction of the area (default 0.3)", None),
    (
        "--contrastive-jitter",
        float,
        "strength of the contrastive views' brightness and contrast jitter, 0 to 1 (default 1)",
        None,
    ),
    ("--contrastive-head", int, "output size of the contrastive term's projection head (default 64)", None),
    ("--contrastive-tau", float, "temperature of the contrastive term (default 0.5)", None),
    ("--optimizer", str, "optimizer (default adam)", ("adam", "adamw")),
    ("--lr", float, "learning rate (peak rate for onecycle)", None),
    ("--weight-decay", float, "weight decay (default 0)", None),
    ("--schedule", str, "learning-rate schedule (default constant)", ("constant", "cosine", "onecycle")),
    ("--epochs", int, "epochs (default 10)", None),
    ("--batch-size", int, "batch size (default 128)", None),
    ("--clip-grad", float, "clip the gradient norm to this value", None),
    ("--patience", int, "early stopping: epochs without validation improvement", None),
    ("--seed", int, "random seed (default 0)", None),
    ("--device", str, "auto, cpu, cuda or cuda:N (default auto)", None),
    ("--channels-last", _bool, "channels-last memory layout (default: on for images)", None),
    ("--amp", _bool, "bf16 autocast (default: on where bf16 is native: CUDA GPUs, AVX512-BF16/AMX CPUs)", None),
    ("--compile", _compile, "torch.compile the step: true, false or a mode (default: reduce-overhead on 1 GPU)", None),
    ("--sync-bn", _bool, "with torchrun: batch-norm statistics over all processes (default false)", None),
    ("--threads", int, "CPU threads for PyTorch", None),
    ("--out", str, "run directory (default runs/DATA-ARCH-TIME)", None),
    ("--image-every", int, "epochs between image summaries (default: about 4 per run)", None),
    ("--histograms", _bool, "write weight/gradient/activation histograms (default true)", None),
    ("--embedding-samples", int, "validation codes shown in the projector (default 500)", None),
]


def _cmd_train(args: argparse.Namespace) -> int:
    from convae.train import load_config_file, resolve_config, train

    settings = {}
    if getattr(args, "config", None):
        settings.update(load_config_file(args.config))
    settings.update(
        {k: v for k, v in vars(args).items() if k not in ("func", "command", "config", "resume") and v is not None}
    )
    if args.resume:
        if len(settings) > (1 if "quiet" in settings else 0):
            raise ConvaeError("--resume continues a run with its saved settings; give no other settings")
        result = train(resume=args.resume)
    else:
        result = train(resolve_config(settings))
    final = result["final"]
    run = result["run_dir"]
    lines = [f"run:          {run}"]
    for key in ("val_mse", "val_psnr", "test_mse", "test_psnr"):
        if key in final:
            lines.append(f"{key + ':':<14}{final[key]:.5g}")
    lines += [
        f"checkpoints:  {run}/best.pt, {run}/last.pt",
        f"metrics:      {run}/metrics.json, {run}/final.json",
        f"tensorboard:  tensorboard --logdir {run}",
    ]
    print("\n".join(lines))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from convae.evaluate import evaluate, format_table

    result = evaluate(args.run, args.data, probe=not args.no_probe)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
        print(f"report:       {args.run}/report.md, {args.run}/eval.json")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from convae.checkpoint import atomic_write
    from convae.evaluate import encode_dataset

    out = Path(args.out)
    if out.suffix not in (".npy", ".npz"):
        raise ConvaeError(f"{out}: the output must end in .npy (codes) or .npz (codes and labels)")
    codes, labels = encode_dataset(args.run, args.data, args.split, progress=not args.quiet)
    if out.suffix == ".npz":
        arrays = {"codes": codes, **({"labels": labels} if labels is not None else {})}
        atomic_write(out, lambda f: np.savez(f, **arrays))
    else:
        atomic_write(out, lambda f: np.save(f, codes))
    extra = " and labels" if labels is not None and out.suffix == ".npz" else ""
    print(f"codes{extra}: {out}  shape {codes.shape}")
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from convae.evaluate import reconstruct

    if not args.inputs and not args.data:
        raise ConvaeError("give image files or --data")
    written = reconstruct(args.run, args.out, inputs=args.inputs, data=args.data, limit=args.limit, noise=args.noise)
    layout = " (noisy input | reconstruction)" if args.noise else ""
    print(f"{len(written)} reconstruction(s){layout} in {args.out}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    import csv
    import io

    from convae.checkpoint import atomic_write, write_json
    from convae.evaluate import score

    result = score(
        args.run, args.data, metric=args.metric, fpr=args.fpr, anomaly_class=args.anomaly_class, maps_dir=args.maps
    )
    scores, labels = result.pop("scores"), result.pop("labels")
    if args.out:
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["index", "score", "flagged"] + (["label"] if labels is not None else []))
        for i, value in enumerate(scores):
            row = [i, f"{value:.6g}", int(value > result["threshold"])]
            writer.writerow(row + ([int(labels[i])] if labels is not None else []))
        atomic_write(args.out, lambda f: f.write(text.getvalue().encode()))
    summary = dict(result)
    if args.json:
        import json

        print(json.dumps(summary, indent=2))
    else:
        print(
            f"threshold ({args.metric}, {args.fpr:.0%} false positives on validation data): {result['threshold']:.6g}"
        )
        print(f"flagged: {result['flagged']} of {result['samples']}")
        if "roc_auc" in result:
            print(
                f"class {result['anomaly_class']} as anomaly: ROC-AUC {result['roc_auc']:.4f}, "
                f"precision {result['precision']:.3f}, recall {result['recall']:.3f}"
            )
    if args.summary:
        write_json(args.summary, summary)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from convae.evaluate import load
    from convae.export import export

    run = load(args.run)
    out = Path(args.out)
    parts = ["autoencoder", "encoder", "decoder"] if args.part == "all" else [args.part]
    for part in parts:
        path = out if len(parts) == 1 else out.with_name(f"{out.stem}.{part}{out.suffix}")
        info = export(run.model, path, args.format, part)
        print(f"{part}: {info['path']}  (dynamic: {', '.join(info['dynamic'])})")
    if run.normalizer.mode != "none":
        print(f"note: inputs must be preprocessed as in training ({run.normalizer.mode}); see {args.run}/preprocess.pt")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from convae import presets

    for name in presets.names():
        p = presets.get(name)
        default = " (default)" if name == presets.DEFAULT_PRESET else ""
        print(f"{name}{default}: {p.description}\n    {p.arch}")
    return 0


def _add_threads_flag(p: argparse.ArgumentParser) -> None:
    # train takes --threads as a setting (TRAIN_FLAGS); the commands that use a run, here
    p.add_argument("--threads", type=_threads, help="CPU threads for PyTorch (default: PyTorch's)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convae", description="Convolutional autoencoders whose decoder mirrors the encoder."
    )
    from convae import __version__

    parser.add_argument("--version", action="version", version=f"convae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "summary",
        help="print the encoder and decoder of an architecture",
        description="Print encoder and decoder blocks, output shapes and parameter counts.",
    )
    p.add_argument("arch", help='architecture string, e.g. "conv(32,3,stride=2) bn relu dense(32)", or a preset name')
    p.add_argument("--input-shape", type=_shape, required=True, help="per-sample shape C,H[,W[,D]], e.g. 1,28,28")
    _add_model_flags(p)
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser(
        "train",
        help="train an autoencoder",
        description="Train an autoencoder; summaries, checkpoints and metrics go to the run directory.",
        epilog="Every flag can also be set in the --config file (TOML, keys like batch_size); flags win.",
    )
    p.add_argument("--config", help="TOML or JSON file of settings")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this directory from its last checkpoint")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress bar or epoch lines")
    for flag, kind, help_text, choices in TRAIN_FLAGS:
        metavar = "true|false" if kind is _bool else None
        p.add_argument(flag, type=kind, choices=choices, default=None, metavar=metavar, help=help_text)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="evaluate a trained run against PCA",
        description="MSE, PSNR, SSIM, per-class MSE and a linear probe, for the model and for PCA with the "
        "same code size; writes eval.json and report.md into the run directory.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="evaluate on this dataset instead of the run's test split")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    _add_threads_flag(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("encode", help="write the codes of a dataset", description="Write the code of every sample.")
    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="dataset (default: the run's)")
    p.add_argument(
        "--split", default="all", choices=("all", "train", "val", "test"), help="which samples (default all)"
    )
    p.add_argument("--out", required=True, help="codes.npy, or codes.npz for codes and labels")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads_flag(p)
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser(
        "reconstruct",
        help="write reconstructions as PNG",
        description="Reconstruct image files (or the first --limit test samples of --data) into PNG files.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("inputs", nargs="*", help="image files")
    p.add_argument("--data", help="a dataset instead of image files")
    p.add_argument("--limit", type=int, default=64, help="samples from --data (default 64)")
    p.add_argument("--noise", help="corrupt the input first (e.g. gaussian:0.3): noisy | clean side by side")
    p.add_argument("--out", required=True, help="output folder")
    _add_threads_flag(p)
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser(
        "score",
        help="anomaly scores from reconstruction error",
        description="Score each test sample by its reconstruction error; set a threshold on the run's "
        "validation data for a false-positive rate; with --anomaly-class, report ROC-AUC and precision/recall.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--data", help="dataset to score (default: the run's test split)")
    p.add_argument("--metric", default="mse", choices=("mse", "l1", "ssim"), help="per-sample error (default mse)")
    p.add_argument("--fpr", type=float, default=0.05, help="false-positive rate on validation data (default 0.05)")
    p.add_argument("--anomaly-class", type=int, help="label counted as anomalous (for ROC-AUC)")
    p.add_argument("--out", help="CSV of per-sample scores")
    p.add_argument("--maps", help="folder for per-pixel error maps of the highest-scoring samples")
    p.add_argument("--summary", help="JSON file for the threshold and metrics")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_threads_flag(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "export",
        help="export to ONNX or TorchScript",
        description="Export the autoencoder, encoder or decoder (dynamic batch; dynamic height and width "
        "in ONNX when the architecture has no dense layer).",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    p.add_argument("--part", default="autoencoder", choices=("autoencoder", "encoder", "decoder", "all"))
    p.add_argument("--out", required=True, help="output file (with --part all: NAME.PART.EXT beside it)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("presets", help="list the named architectures", description="List the named architectures.")
    p.set_defaults(func=_cmd_presets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.func is not _cmd_train and getattr(args, "threads", None):  # train takes it as a setting
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except ConvaeError as err:
        import os

        # Under torchrun every process may fail; say which one spoke.
        rank = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"convae: error{rank}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convae: interrupted", file=sys.stderr)
        return 130
