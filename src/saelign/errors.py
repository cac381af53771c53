"""One exception type for every user-facing failure; the CLI turns it into a one-line message and exit 2."""


class SaelignError(Exception):
    """A problem the user can fix: the message names the file or field and what to do."""


def require(ok: object, message: str) -> None:
    """Raise SaelignError(message) unless `ok`: one line per check. The message is built either way, so it
    must not index into what the check guards (write `if bad: raise ...` then)."""
    if not ok:
        raise SaelignError(message)
