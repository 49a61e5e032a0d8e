"""The one exception type the command line turns into a one-line message and a non-zero exit."""


class RnnkitError(Exception):
    """Bad input or state that the user can fix: the message says what was expected and what was found."""
