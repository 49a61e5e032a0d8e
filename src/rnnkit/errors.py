"""The exceptions the command line turns into a one-line message and a non-zero exit."""


class RnnkitError(Exception):
    """Bad input or state that the user can fix: the message says what was expected and what was found."""


class ParameterError(RnnkitError, ValueError):
    """A parameter's value is out of its range. The message begins with the parameter's name
    (`top_k must be at least 1, got 0`), which the command line replaces by its flag's."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"{param} {problem}")
        self.param = param
