"""Eigenface's exceptions: every message is written for the person who caused it.

:class:`InputError` is what the service, the saved-edit state and the CLI raise for a request
they cannot serve as given. The engine (models, sampling, basis, edit, geometry) knows nothing
of requests: it raises its own :class:`ModelError` and :class:`EditError`, and the service passes
them on as they are. The CLI prints any :class:`EigenfaceError` as one line and exits 2; the web
app shows it in a toast; neither shows a traceback. Anything else that escapes is a bug.
"""


class EigenfaceError(ValueError):
    """Base class: a request, a checkpoint or an edit Eigenface cannot work with, explained."""


class InputError(EigenfaceError):
    """A request Eigenface cannot serve as given (unknown model, k out of range, NaN strength...)."""


class ModelError(EigenfaceError):
    """A checkpoint or device that cannot be loaded or used, and why."""


class EditError(EigenfaceError):
    """An edit that cannot be made at this point (no basis for a geodesic edit, a failed shot)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when empty), for a one-line error
    that wraps what a library raised."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
