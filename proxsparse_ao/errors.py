"""The error type for problems with a user's input (paths, data, models, settings)."""


class ProxSparseError(Exception):
    """Bad or unusable input: the CLI prints its message as one line and exits with status 2."""
