"""Errors the command line turns into one line on stderr: exit 2 for bad input (UsageError and
its subclasses), exit 1 for a service that did not start (StartError)."""


class UsageError(Exception):
    """Bad user input: the message names the field, the bad value and what is allowed.

    The CLI prints ``maxup: error: <message>`` and exits with status 2; nothing is launched
    or written before it is raised.
    """


#: The most characters of a bad value :class:`ConfigError` ever writes out. ``repr`` of a YAML
#: alias chain ("billion laughs": each level nine references to the one below) built the
#: whole text first: a 1.22 GB line, or a MemoryError at 6 GB (issue 27).
REPR_BUDGET = 10_000


class _Full(Exception):
    pass


def bounded_repr(value, budget: int = REPR_BUDGET) -> tuple[str, bool]:
    """``(repr(value), True)`` when it is at most ``budget`` characters, else ``(its first
    characters, False)``, without ever building more than about ``budget`` characters: shared
    sub-structures (YAML aliases) are walked only until the budget runs out."""
    parts: list[str] = []
    used = 0

    def emit(text: str) -> None:
        nonlocal used
        parts.append(text)
        used += len(text)
        if used > budget:
            raise _Full

    def walk(v, depth: int) -> None:
        if depth > 100:
            emit("...")
            raise _Full
        if isinstance(v, dict):
            emit("{")
            for i, (k, x) in enumerate(v.items()):
                emit(", " if i else "")
                walk(k, depth + 1)
                emit(": ")
                walk(x, depth + 1)
            emit("}")
        elif isinstance(v, list | tuple):
            emit("[" if isinstance(v, list) else "(")
            for i, x in enumerate(v):
                emit(", " if i else "")
                walk(x, depth + 1)
            emit("]" if isinstance(v, list) else ("," if len(v) == 1 else "") + ")")
        elif isinstance(v, str) and len(v) > budget:
            emit(repr(v[:budget]))
        elif isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 4 * budget:
            emit(f"<an integer of {v.bit_length()} bits>")
            raise _Full
        else:
            try:
                emit(repr(v))
            except ValueError:  # an int past Python's digit limit for str()
                emit(f"<an integer of {v.bit_length()} bits>")

    try:
        walk(value, 0)
    except _Full:
        return "".join(parts)[:budget], False
    return "".join(parts), True


class ConfigError(UsageError):
    """A run or sweep configuration failed validation."""

    def __init__(self, field: str, value, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        # A 400-digit number or a whole pasted document: keep the line short. A path is shown
        # whole (up to a long one): it is what the user must find and fix.
        limit = 400 if isinstance(value, str) else 80
        shown, complete = bounded_repr(value, REPR_BUDGET)
        if not complete:
            shown = shown[:60] + f"... (more than {REPR_BUDGET} characters)"
        elif len(shown) > limit:
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
