"""The errors a user can cause, shared by every layer.

A `UserError` says that something the user gave is wrong (a config value, a file, a data row, an
address) and names it; `tipslab` prints its message in one line and exits with code 2. Every other
exception is a bug or a failure of the machinery and keeps its traceback. Both subclasses are also
`ValueError`s, so code that validates values can catch them as such.
"""


class UserError(Exception):
    """Something the user gave is wrong; the message names it and says what to do."""


class ConfigError(UserError, ValueError):
    """A config key, spec entry or command-line value is invalid; the message names the key."""


class DataError(UserError, ValueError):
    """Data the user pointed at cannot be used (a shard set, a source, a checkpoint, a tokenizer)."""
