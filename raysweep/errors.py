"""One exception family for everything raysweep raises on purpose.

The CLI maps :class:`UsageError` subclasses (bad config, bad arguments) to exit
code 2 and everything else derived from :class:`RaysweepError` to exit code 1,
each as a single line. Library code raises; only ``raysweep.cli`` prints.
"""
from __future__ import annotations


class RaysweepError(Exception):
    """A failure raysweep can explain in one line."""

    exit_code = 1


class UsageError(RaysweepError):
    """The user asked for something invalid; nothing was started or written."""

    exit_code = 2


class ConfigError(UsageError):
    """A config file (or an override) is invalid.

    The message names the file and the dotted key path, e.g.
    ``configs/digits.yaml: search.search_space.optimizer.lr.low must be > 0
    for loguniform, got 0.0``.
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        self.path = path
        self.key = key
        prefix = ""
        if path:
            prefix += f"{path}: "
        if key:
            prefix += f"{key}: "
        super().__init__(prefix + message)


class StudyError(UsageError):
    """A study name clash, a missing study, or unreachable study storage."""


class TrainerError(RaysweepError):
    """The training function failed in a way worth one clear line."""


class SweepInterrupted(RaysweepError):
    """The sweep was stopped by the user (Ctrl-C); what finished is saved."""

    exit_code = 130
