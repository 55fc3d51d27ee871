"""User-facing errors: each carries one line that says what went wrong and what to do."""
from __future__ import annotations


class RobustbenchError(Exception):
    """Base class; the CLI prints these as one line and exits non-zero."""


class ConfigError(RobustbenchError):
    """An unknown name, a bad hparam key or value, or components that do not fit together."""


class PluginError(RobustbenchError):
    """A plugin that failed to import or whose name clashes with another provider."""


class DataNotFoundError(RobustbenchError):
    """A dataset's files are missing; the message names the command that prepares them."""


class RunFailedError(RobustbenchError):
    """A run that cannot go on (e.g. a non-finite loss); no final.json is written."""
