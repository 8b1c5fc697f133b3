"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class CnnzipError(Exception):
    """An error caused by the user's input (a path, a file, an option), not by a bug."""


class DataError(CnnzipError):
    """A dataset is missing, truncated or not in the expected format."""


class ModelError(CnnzipError):
    """A model name, factory or architecture cannot be built."""


class CheckpointError(CnnzipError):
    """A checkpoint file is missing, damaged or was not written by cnnzip."""


class UnforeseenContent(CheckpointError):
    """A file's content failed in a way no explicit check caught (reported, never a traceback)."""


class ArgumentError(CnnzipError):
    """A command-line option or API argument out of its range."""
