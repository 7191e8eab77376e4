"""Errors the command line turns into one line on stderr: exit 2 for bad input (UsageError and
its subclasses), exit 1 for a service that did not start (StartError)."""


class UsageError(Exception):
    """Bad user input: the message names the field, the bad value and what is allowed.

    The CLI prints ``maxup: error: <message>`` and exits with status 2; nothing is launched
    or written before it is raised.
    """


class ConfigError(UsageError):
    """A run or sweep configuration failed validation."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        shown = repr(value)
        # A 400-digit number or a whole pasted document: keep the line short. A path is shown
        # whole (up to a long one): it is what the user must find and fix.
        limit = 400 if isinstance(value, str) else 80
        if len(shown) > limit:
            shown = shown[:60] + f"... ({len(shown)} characters)"
        name = field if field.isprintable() else repr(field)  # a key holding a newline
        super().__init__(f"{name}: got {shown}; allowed: {allowed}")

    def __reduce__(self):
        # Copy and pickle by the constructor's arguments: Ray copies a trial's exception
        # (``copy.copy``) and pickles it to the driver, and the default (``self.args``, the one
        # message) broke both with a TypeError printed over the real error.
        return type(self), (self.field, self.value, self.allowed)


class DataError(UsageError):
    """A dataset is missing or malformed at the given path."""


class ProfileError(UsageError):
    """A device profile (``maxup calibrate``'s JSON) is missing, unreadable or malformed."""


class StartError(Exception):
    """A service the command needs did not come up (the embedded Ray on an overloaded machine).

    Not the user's input: the CLI prints ``maxup: error: <message>`` and exits with status 1.
    Whatever had finished before stays stored, so the same command can simply be run again.
    """
