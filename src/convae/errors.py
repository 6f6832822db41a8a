"""The one exception type for user mistakes."""


class ConvaeError(ValueError):
    """A mistake in what the user asked for (a bad spec, path, flag or file).

    The command line prints its message as one line and exits with status 2;
    anything else that escapes is a bug and keeps its traceback.
    """
