"""UI-only glue shared by the sections: constants, the error guard, ZeroGPU support.

Nothing here knows about diffusion; the sections call :class:`ui.editor.Editor`, which calls
the service.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, TypeVar

import gradio as gr

from backend.basis import MAX_K
from backend.cancel import Cancelled
from backend.errors import EigenfaceError

from .sessions import REQUESTS

log = logging.getLogger("eigenface.app")

#: The slider pool: one slider per possible direction, the first k shown.
N_SLIDERS = MAX_K
#: Slider range and step. The direction sliders are positions on each direction's calibrated
#: range (backend/ranges.py; Found.strength turns them into strengths); the saved-direction and
#: text sliders are in the service's strength unit (RMS change of x_t per element).
SLIDER_MIN, SLIDER_MAX, SLIDER_STEP = -1.0, 1.0, 0.05
#: Atlas rows: this many edits from -s to +s along each direction.
ATLAS_COLUMNS = 5
#: Largest seed the page takes: browsers hold numbers as doubles, exact up to 2**53.
MAX_UI_SEED = 2**53 - 1
RANDOM_SEED_MAX = 2**31 - 1
GENERIC_ERROR = "Something went wrong on the server (the details were logged). Please try again or change the settings."

CSS = """
#eigen-image .image-container > button, #eigen-image .image-frame,
#eigen-steer-image .image-container > button, #eigen-steer-image .image-frame { width: 100%; height: 100%; }
#eigen-image .image-frame img, #eigen-compare img, #eigen-steer-image .image-frame img { width: 100%; height: 100%; object-fit: contain; }
#eigen-download .empty { min-height: 56px; height: 56px; }
#eigen-sliders { max-height: 72vh; overflow-y: auto; }
#eigen-sliders > .form { flex-shrink: 0; }
#eigen-status p { margin: 0; }
#eigen-share textarea, #eigen-share input { font-family: ui-monospace, monospace; font-size: 0.85em; }
"""

F = TypeVar("F", bound=Callable[..., Any])


def guard(fn: F) -> F:
    """Handler wrapper: bad input -> a toast with its message; anything else -> logged, generic toast.

    The handler runs as one of :data:`ui.sessions.REQUESTS`: it stops when its client leaves
    or the same page sends a newer request to the same handler (:class:`Cancelled`).

    ``functools.wraps`` keeps the signature, so Gradio still sees ``gr.Progress`` and
    ``gr.Request`` parameters.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with REQUESTS.running(fn.__qualname__):
                return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Cancelled as exc:
            raise gr.Error(f"Stopped: {exc}.", print_exception=False) from None
        except EigenfaceError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception:
            log.exception("handler %s failed", getattr(fn, "__qualname__", fn))
            raise gr.Error(GENERIC_ERROR, print_exception=False) from None

    return wrapper  # type: ignore[return-value]


# ------------------------------------------------------------------------------ ZeroGPU
#: True on a Hugging Face ZeroGPU Space, where GPU work runs in a forked worker per call.
ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true", "t", "yes")

try:  # the `spaces` package exists on Hugging Face Spaces; its GPU decorator is inert elsewhere
    import spaces  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the host
    spaces = None


def gpu(duration: int = 60) -> Callable[[F], F]:
    """``spaces.GPU(duration=...)`` when the ``spaces`` package is importable, else a no-op."""

    def decorate(fn: F) -> F:
        if spaces is None:
            return fn
        return spaces.GPU(duration=duration)(fn)  # type: ignore[no-any-return]

    return decorate
