"""One exception type for every user-facing failure; the CLI turns it into a one-line message and exit 2."""


class SaelignError(Exception):
    """A problem the user can fix: the message names the file or field and what to do."""
