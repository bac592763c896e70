"""Errors a user can cause and fix. The CLI prints them on one line and exits with status 2.

Anything else that escapes is a bug in this library, not bad input.
"""
from __future__ import annotations


class MagcError(Exception):
    """Base class: a problem with the user's input, files or environment."""

    exit_code = 2


class UsageError(MagcError):
    """Bad arguments or options."""


class InputError(MagcError):
    """An input file is missing, unreadable, or not what it should be."""


class FormatError(MagcError):
    """A .magc file is not valid: wrong magic or version, truncated, or corrupted."""


class MapMismatchError(MagcError):
    """Decoding was asked to use a different map than the one the file was encoded with."""


class ModelMismatchError(MagcError):
    """The file was made with other weights than the ones loaded for decoding."""


class UntrainedModelError(MagcError):
    """A preset without trained weights was asked to encode without --allow-untrained."""


class TrainingDiverged(MagcError):
    """A training loss became non-finite; the last checkpoint, saved before, is kept."""


class Cancelled(MagcError):
    """The caller cancelled a long operation; no output was left behind."""
