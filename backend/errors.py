"""The one exception type for bad input: its message is written for the person who gave it."""


class InputError(ValueError):
    """A request Eigenface cannot serve as given (unknown model, k out of range, NaN strength...).

    The CLI prints it as one line and exits 2; the web app shows it in a toast; neither shows
    a traceback. Anything else that escapes is a bug.
    """
