"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into one line on stderr and exit status 2; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (path, name, spec, flag); the message says how to fix it."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)
