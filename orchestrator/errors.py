"""How commands fail. A `UserError` (models/errors.py; `ConfigError` and `DataError` are kinds of it)
exits with code 2 and one line; `CommandFailed` exits with code 1 and one line, for work that ran
and failed (a trial, a benchmark's process), naming where its logs are; anything else is a bug and
keeps its traceback."""

from tipslab.models.errors import ConfigError, DataError, UserError

__all__ = ["PATH_ERRORS", "CommandFailed", "ConfigError", "DataError", "UserError"]

# A path the user gave that is missing, unreadable, or of the wrong kind: the error names it.
PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class CommandFailed(Exception):
    """The command's work ran and failed; the message says what failed and where to look."""
