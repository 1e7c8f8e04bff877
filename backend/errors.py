"""The one exception type for bad input: its message is written for the person who gave it."""


class InputError(ValueError):
    """A request Eigenface cannot serve as given (unknown model, k out of range, NaN strength...).

    The CLI prints it as one line and exits 2; the web app shows it in a toast; neither shows
    a traceback. Anything else that escapes is a bug.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when empty), for a one-line InputError
    that wraps what a library raised."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
