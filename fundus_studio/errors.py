"""Errors that reach the user: one line, naming the file and what was wrong."""

from __future__ import annotations


class StudioError(Exception):
    """Base of every error the CLI and the app report as a one-line message (no traceback)."""


class InputError(StudioError, ValueError):
    """A file, upload, argument or array that cannot be used as given."""


class CheckpointError(StudioError):
    """A missing, corrupt or incompatible checkpoint."""


class DatasetError(StudioError):
    """A dataset folder that cannot be read, resumed or written as asked."""
