"""Command line: parse arguments, build a config, call one library function.

The training flags, their help and defaults are generated from the fields of
:class:`convae.config.TrainConfig`. Booleans read the same everywhere:
``--tied`` alone means true, ``--tied false`` says so. User mistakes
(``ConvaeError`` and bad flags) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from convae import config as cfg
from convae.errors import ConvaeError
from convae.parsers import parse_bool, parse_sizes

RESUME_SETTINGS = {"epochs", "max_steps", "quiet"}  # what --resume accepts beside the run


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- flags from settings


def _flag_type(f: dataclasses.Field) -> tuple[typing.Callable[[str], Any], str | None]:
    """The text -> value function of a setting's flag, and its metavar."""
    meta = f.metadata
    if meta["parse"] is not None:
        return meta["parse"], meta["metavar"]
    kinds = [k for k in typing.get_args(typing.get_type_hints(cfg.TrainConfig)[f.name]) if k is not type(None)]
    kind = kinds[0] if kinds else typing.get_type_hints(cfg.TrainConfig)[f.name]
    if kind is bool:
        return parse_bool, "true|false"
    if kind in (int, float):
        return kind, meta["metavar"] or ("N" if kind is int else "X")
    return str, meta["metavar"]


def _checked(f: dataclasses.Field, parse: typing.Callable[[str], Any]) -> typing.Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = parse(text)
            cfg.check_field(f, value)
        except ConvaeError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(f"{f.name} ")) from None
        except ValueError as err:
            kind = {int: "an integer", float: "a number"}.get(parse)
            raise argparse.ArgumentTypeError(f"'{text}' is not {kind}" if kind else str(err)) from None
        return value

    convert.__name__ = f.name  # argparse names the type in its messages
    return convert


def _default_text(f: dataclasses.Field) -> str:
    if f.metadata["default_text"]:
        return f" (default: {f.metadata['default_text']})"
    if f.default is None or f.default == "":
        return ""
    value = str(f.default).lower() if isinstance(f.default, bool) else f.default
    return f" (default: {value})"


def add_settings(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Flags for these TrainConfig settings (all the user's, in groups, by default)."""
    for section in cfg.SECTIONS:
        fields = [f for f in dataclasses.fields(section) if not f.metadata["internal"]]
        fields = [f for f in fields if names is None or f.name in names]
        if not fields:
            continue
        group = parser.add_argument_group(section.__doc__.strip()) if names is None else parser
        for f in fields:
            parse, metavar = _flag_type(f)
            kwargs: dict[str, Any] = {"type": _checked(f, parse), "default": None, "metavar": metavar}
            if parse is parse_bool:
                kwargs |= {"nargs": "?", "const": True}
            if f.metadata["choices"] is not None:  # checked by the type, with the config's message
                kwargs["metavar"] = "{" + ",".join(map(str, f.metadata["choices"])) + "}"
            help_text = f.metadata["help"] + _default_text(f)
            group.add_argument("--" + f.name.replace("_", "-"), help=help_text.replace("%", "%%"), **kwargs)


def _settings(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


# ----------------------------------------------------------------------------- commands


def _cmd_summary(args: argparse.Namespace) -> int:
    from convae import presets
    from convae.network.model import build

    model = build(
        presets.resolve(args.arch),
        args.input_shape,
        output=args.output or "sigmoid",
        tied=bool(args.tied),
        upsample=args.upsample or "transpose",
    )
    print(model.summary())
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from convae.training.train import train

    settings = cfg.load_config_file(args.config) if args.config else {}
    settings.update(_settings(args, cfg.USER_FIELDS))
    if args.resume:
        extra = sorted(set(settings) - RESUME_SETTINGS)
        if extra or args.config:
            refused = ": not " + ", ".join(extra) if extra else ""
            raise ConvaeError(
                "--resume continues a run with its saved settings; give no other settings "
                f"(only --epochs or --max-steps to train it on, or --quiet){refused}"
            )
        extend = {k: settings.get(k) for k in ("epochs", "max_steps", "quiet")}
        result = train(resume=args.resume, **extend)
    else:
        result = train(cfg.resolve_config(settings))
    final, run = result["final"], result["run_dir"]
    lines = [f"run:          {run}"]
    lines += [
        f"{key + ':':<14}{final[key]:.5g}" for key in ("val_mse", "val_psnr", "test_mse", "test_psnr") if key in final
    ]
    lines += [
        f"checkpoints:  {run}/best.pt, {run}/last.pt",
        f"metrics:      {run}/metrics.json, {run}/final.json",
        f"tensorboard:  tensorboard --logdir {run}",
    ]
    print("\n".join(lines))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from convae.inference.evaluate import evaluate
    from convae.inference.reports import format_table

    result = evaluate(args.run, args.data, probe=not args.no_probe)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
        print(f"report:       {args.run}/report.md, {args.run}/eval.json")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from convae.checkpoint import atomic_write, check_output
    from convae.inference.run import encode_dataset

    out = Path(args.out)
    if out.suffix not in (".npy", ".npz"):
        raise ConvaeError(f"{out}: the output must end in .npy (codes) or .npz (codes and labels)")
    check_output(out)
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
    from convae.checkpoint import check_output
    from convae.inference.reports import reconstruct

    if not args.inputs and not args.data:
        raise ConvaeError("give image files or --data")
    check_output(args.out, folder=True)
    written = reconstruct(args.run, args.out, inputs=args.inputs, data=args.data, limit=args.limit, noise=args.noise)
    layout = " (noisy input | reconstruction)" if args.noise else ""
    print(f"{len(written)} reconstruction(s){layout} in {args.out}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    import json

    from convae.checkpoint import check_output
    from convae.inference.anomaly import score, write_outputs

    for path in (args.out, args.summary, args.report):
        if path:
            check_output(path)
    if args.maps:
        check_output(args.maps, folder=True)
    result = score(
        args.run,
        args.data,
        metric=args.metric,
        fpr=args.fpr,
        anomaly_class=args.anomaly_class,
        maps_dir=args.maps,
        sigmas=args.sigmas,
        report=args.report,
    )
    try:
        write_outputs(result, csv_path=args.out, summary_path=args.summary)
    except ConvaeError:
        if args.report:  # all the outputs or none
            Path(args.report).unlink(missing_ok=True)
        raise
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        rule = (
            f"mean + {args.sigmas:g} sd of validation scores"
            if args.sigmas is not None
            else f"{args.fpr:.0%} false positives on validation data"
        )
        print(f"threshold ({result['metric']}, {rule}): {result['threshold']:.6g}")
        print(f"flagged: {result['flagged']} of {result['samples']}")
        for what, path in (
            ("scores", args.out),
            ("summary", args.summary),
            ("maps", args.maps),
            ("review page", args.report),
        ):
            if path:
                print(f"{what}: {path}")
        if "roc_auc" in result:
            if "anomaly_class" in result:
                which = f"class {result['anomaly_class']} as anomaly"
            elif "normal_class" in result:
                which = f"class {result['normal_class']} as normal, the others as anomalies"
            else:
                which = f"{result['normal']} against the defects"
            print(
                f"{which}: ROC-AUC {result['roc_auc']:.4f}, "
                f"precision {result['precision']:.3f}, recall {result['recall']:.3f}"
            )
        if "aupro" in result:
            print(f"pixels: ROC-AUC {result['pixel_auroc']:.4f}, AUPRO (to 30 % FPR) {result['aupro']:.4f}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from convae.inference.export import export_run

    written = export_run(
        args.run,
        args.out,
        args.format,
        args.part,
        scores=args.scores,
        metric=args.metric,
        fpr=args.fpr,
        sigmas=args.sigmas,
        input_size=args.input_size,
    )
    for info in written:
        outputs, dynamic = ", ".join(info["outputs"]), ", ".join(info["dynamic"])
        print(f"{info['part']}: {info['path']}  (outputs: {outputs}; dynamic: {dynamic})")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from convae import presets

    for name in presets.names():
        p = presets.get(name)
        default = " (default)" if name == presets.DEFAULT_PRESET else ""
        recipe = ", ".join(f"{k}={v}" for k, v in p.train.items())
        print(f"{name}{default}: {p.description}\n    {p.arch}\n    recipe: {recipe}")
    return 0


# ----------------------------------------------------------------------------- the parser


def _shape(text: str) -> tuple[int, ...]:
    shape = tuple(parse_sizes(text))
    if not shape:
        raise argparse.ArgumentTypeError(f"'{text}' is not a shape like 1,28,28")
    return shape


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive integer")
    return int(text)


def _run_command(sub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand that works on a trained run: its RUN argument and --threads."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("run", help="run directory")
    add_settings(p, ["threads"])
    return p


def make_parser() -> argparse.ArgumentParser:
    from convae import __version__

    parser = Parser(prog="convae", description="Convolutional autoencoders whose decoder mirrors the encoder.")
    parser.add_argument("--version", action="version", version=f"convae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "summary",
        help="print the encoder and decoder of an architecture",
        description="Print encoder and decoder blocks, output shapes and parameter counts.",
    )
    p.add_argument("arch", help='architecture string, e.g. "conv(32,3,stride=2) bn relu dense(32)", or a preset name')
    p.add_argument("--input-shape", type=_shape, required=True, help="per-sample shape C,L or C,H,W or C,D,H,W")
    add_settings(p, ["output", "tied", "upsample"])
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser(
        "train",
        help="train an autoencoder",
        description="Train an autoencoder; summaries, checkpoints and metrics go to the run directory. "
        "Defaults are the default preset's recipe; a preset given with --arch brings its own "
        "(`convae presets`); a --config file overrides both, and flags override the file.",
        epilog="Every flag is also a key of the --config file (TOML or JSON, keys like batch_size, "
        "at the top level or in a [train] table).",
    )
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of settings")
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the run in this directory from its last checkpoint (with --epochs N: train it on to N epochs)",
    )
    add_settings(p)
    p.set_defaults(func=_cmd_train)

    p = _run_command(
        sub,
        "eval",
        "evaluate a trained run against PCA",
        "MSE, PSNR, SSIM, per-class MSE and a linear probe, for the model and for PCA with the "
        "same code size; writes eval.json and report.md into the run directory.",
    )
    p.add_argument("--data", help="evaluate on this dataset instead of the run's test split")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    p.set_defaults(func=_cmd_eval)

    p = _run_command(sub, "encode", "write the codes of a dataset", "Write the code of every sample.")
    p.add_argument("--data", help="dataset (default: the run's)")
    p.add_argument(
        "--split", default="all", choices=("all", "train", "val", "test"), help="which samples (default: all)"
    )
    p.add_argument("--out", required=True, help="codes.npy, or codes.npz for codes and labels")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_encode)

    p = _run_command(
        sub,
        "reconstruct",
        "write reconstructions as PNG",
        "Reconstruct image files (or the first --limit test samples of --data) into PNG files.",
    )
    p.add_argument("inputs", nargs="*", help="image files")
    p.add_argument("--data", help="a dataset instead of image files")
    p.add_argument("--limit", type=_positive, default=64, help="samples from --data (default: 64)")
    p.add_argument("--noise", help="corrupt the input first (e.g. gaussian:0.3): noisy | clean side by side")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_reconstruct)

    p = _run_command(
        sub,
        "score",
        "anomaly scores from reconstruction error",
        "Score each test sample by its reconstruction error; set a threshold on the run's "
        "validation data for a false-positive rate; with --anomaly-class, report ROC-AUC and precision/recall.",
    )
    p.add_argument("--data", help="dataset to score (default: the run's test split)")
    p.add_argument(
        "--metric",
        choices=cfg.SCORE_METRICS,
        help="image score: mean error, 1 - SSIM, the max of the anomaly map, the mean distance of the "
        "code to the 5 nearest training codes, mse and knn standardised on validation data and summed, or "
        "max+patch: max and the raw-pixel patch distances to the training images, standardised and summed "
        "(default: max for data with defect masks or a run with a segmenter, mse+knn for a one-class run, "
        "else mse)",
    )
    p.add_argument("--fpr", type=float, default=0.05, help="false-positive rate on validation data (default: 0.05)")
    p.add_argument(
        "--sigmas", type=float, metavar="K", help="threshold at the validation scores' mean + K standard deviations"
    )
    p.add_argument("--anomaly-class", type=int, help="label counted as anomalous (for ROC-AUC)")
    p.add_argument("--out", help="CSV of per-sample scores")
    p.add_argument(
        "--maps",
        metavar="DIR",
        help="folder of heat-map overlays of the highest-scoring images: input | map | defect mask",
    )
    p.add_argument("--summary", help="JSON file for the threshold and metrics")
    p.add_argument(
        "--report",
        metavar="PAGE.html",
        help="a self-contained HTML page to review the results: metrics, plots, every test image by score "
        "with its heat map, a threshold you can move",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "export",
        help="export to ONNX or TorchScript",
        description="Export the autoencoder, encoder or decoder, or with --scores the anomaly scorer. Exports take "
        "raw inputs (images as floats in [0, 1], shaped N,C,H,W; the normalisation is inside), name their "
        "outputs and carry the run's metadata; dynamic batch, and dynamic height and width in ONNX when the "
        "architecture has no dense layer.",
    )
    p.add_argument("run", help="run directory")
    p.add_argument("--format", default="onnx", choices=cfg.EXPORT_FORMATS, help="file format (default: onnx)")
    p.add_argument(
        "--part",
        default="autoencoder",
        choices=(*cfg.EXPORT_PARTS, "all"),
        help="what to export (default: autoencoder; segmenter: DRAEM's anomaly map alone; "
        "all: every part the run has, as NAME.PART.EXT beside --out)",
    )
    p.add_argument(
        "--scores",
        action="store_true",
        help="export the anomaly scorer: outputs reconstruction, anomaly_map and score, as `convae score` "
        "computes them, with the threshold in the metadata",
    )
    p.add_argument(
        "--metric",
        choices=cfg.SCORE_METRICS[:4],
        help="with --scores: the image score (as for score; not knn, mse+knn or max+patch)",
    )
    p.add_argument(
        "--fpr",
        type=float,
        default=0.05,
        help="with --scores: the threshold's false-positive rate on validation data (default: 0.05)",
    )
    p.add_argument(
        "--sigmas", type=float, metavar="K", help="with --scores: the threshold at mean + K sd, as for score"
    )
    p.add_argument(
        "--input-size",
        type=_shape,
        metavar="H,W",
        help="with --scores, for a run trained on patches (--crop): the size of the images the scorer takes; "
        "the graph slides the windows over them as `convae score` does",
    )
    p.add_argument("--out", required=True, help="output file")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("presets", help="list the named architectures", description="List the presets and recipes.")
    p.set_defaults(func=_cmd_presets)
    return parser


def _inside_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user mistake is one line on stderr and exit status 2, Ctrl-C is 130."""
    import signal
    import threading
    import warnings

    # Once Ctrl-C was pressed, whatever follows is reported as the interruption. It is not raised
    # inside an import: there torch's C++ can turn it into an abort, or a library swallow it; it is
    # raised by an alarm once the import is done.
    interrupted: list[bool] = []

    def on_interrupt(signum, frame):
        interrupted.append(True)
        if can_defer and _inside_import(frame):
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    can_defer = main_thread and hasattr(signal, "setitimer")  # not on Windows
    previous = signal.signal(signal.SIGINT, on_interrupt) if main_thread else None
    previous_alarm = signal.signal(signal.SIGALRM, on_interrupt) if can_defer else None
    try:
        args = make_parser().parse_args(argv)
        # Warnings from the libraries wait for the command's end: when it fails they are dropped,
        # so the error stays one line; when it succeeds each is one line after its output.
        with warnings.catch_warnings(record=True) as caught:
            if getattr(args, "threads", None) and args.func is not _cmd_train:  # train: a setting of the run
                from convae.runtime import set_threads

                set_threads(args.threads)
            if args.func is _cmd_train:  # a run's files are written as it trains (see training.rundir)
                status = args.func(args)
            else:  # a command that fails leaves no file of its own behind
                from convae.checkpoint import all_or_nothing

                with all_or_nothing():
                    status = args.func(args)
        for warning in caught:
            print(f"warning: {str(warning.message).splitlines()[0]}", file=sys.stderr)
        return status
    except ConvaeError as err:
        import os

        # Under torchrun every process may fail; say which one spoke.
        rank = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"convae: error{rank}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convae: interrupted", file=sys.stderr)
        return 130
    except BaseException:
        if not interrupted:
            raise
        print("convae: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if previous_alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_alarm)
