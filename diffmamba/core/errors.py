"""User-facing errors: the CLI prints them as one line and exits 2, with no traceback."""


class UserError(Exception):
    """A mistake the user can fix. The message says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A bad configuration value or combination; the message names the field."""
