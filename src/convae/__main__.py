import sys


def _exit(status: int) -> None:
    # CPython remembers a KeyboardInterrupt that passed through any exec() of a string (scipy's
    # import runs one) and, under `python -m`, then ends the process by SIGINT whatever status it
    # is given; an exec that completes forgets it, so Ctrl-C is exit status 130 every time.
    exec("pass")
    raise SystemExit(status)


try:
    from convae.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python starts up: no traceback either
    print("convae: interrupted", file=sys.stderr)
    _exit(130)

_exit(main())
