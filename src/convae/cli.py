"""Command line: parse arguments, build a config, call one library function.

User mistakes (``ConvaeError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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
    from convae.model import build

    model = build(args.arch, args.input_shape, output=args.output, tied=args.tied, upsample=args.upsample)
    print(model.summary())
    return 0


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
    p.add_argument("arch", help='architecture string, e.g. "conv(32,3,stride=2) bn relu dense(32)"')
    p.add_argument("--input-shape", type=_shape, required=True, help="per-sample shape C,H[,W[,D]], e.g. 1,28,28")
    _add_model_flags(p)
    p.set_defaults(func=_cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConvaeError as err:
        print(f"convae: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convae: interrupted", file=sys.stderr)
        return 130
