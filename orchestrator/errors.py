class UserError(Exception):
    """Something the user gave is wrong; the CLI prints the message and exits with code 2."""


class ConfigError(UserError, ValueError):
    """A config or spec is invalid; the message names the file and the key's dotted path."""
