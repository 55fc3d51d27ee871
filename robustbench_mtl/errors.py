"""User-facing errors: each carries one line that says what went wrong and what to do."""
from __future__ import annotations


class RobustbenchError(Exception):
    """Base class; the CLI prints these as one line and exits with `exit_code`."""

    exit_code = 2


class ConfigError(RobustbenchError):
    """An unknown name, a bad hparam key or value, or components that do not fit together."""


class PluginError(RobustbenchError):
    """A plugin that failed to import or whose name clashes with another provider."""


class DataNotFoundError(RobustbenchError):
    """A dataset's files are missing; the message names the command that prepares them."""


class RunFailedError(RobustbenchError):
    """A run that cannot go on (e.g. a non-finite loss); no final.json is written."""


class Interrupted(RobustbenchError):
    """Ctrl-C during a run: the message says what is checkpointed and the command that resumes."""

    exit_code = 130  # the shell's convention for SIGINT
