"""Errors raised for bad dataset files: one line naming the file and the field."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A dataset file is missing, unreadable or malformed; the message names file and field."""


class MissingFileError(DataFormatError, FileNotFoundError):
    """An expected dataset file does not exist (catchable as either parent)."""
