import sys

try:
    from convae.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python starts up: no traceback either
    print("convae: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
