"""Eigenface web app: find the directions a diffusion model already has, and steer along them.

    python app.py                                  # the built-in cat-people model, http://127.0.0.1:7860
    python app.py --models "sd15=/models/sd15"     # also offer other local models (host's allow-list)
    EIGENFACE_MODELS="sd15=/models/sd15" python app.py
    python app.py --library /data/directions      # where saved directions go (env EIGENFACE_LIBRARY)
    python app.py --budget 20000                   # most U-Net evaluations per request (env EIGENFACE_BUDGET)

Remote users choose among the allow-listed names only; they never type a path or hub id.
``import app`` builds nothing and serves nothing: call :func:`build_demo`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# Runs from the repository root (a Space's working directory) without an install.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gradio as gr  # noqa: E402

from backend.budget import DEFAULT_BUDGET  # noqa: E402
from backend.catpeople.semantics import labellers_for  # noqa: E402
from backend.errors import InputError  # noqa: E402
from backend.registry import builtin_models  # noqa: E402
from backend.config import DEFAULT_LIBRARY, ServiceConfig  # noqa: E402
from backend.service import EigenfaceService  # noqa: E402
from backend.state import EditState, check_model_name  # noqa: E402
from ui.common import CSS, ZERO_GPU  # noqa: E402
from ui.page import Page  # noqa: E402

TITLE = "Eigenface"
INTRO = (
    "# Eigenface\n"
    "Find the semantic directions a diffusion model already has — the top singular vectors of the "
    "Jacobian of its U-Net bottleneck (h-space) at one noisy image — and steer the image along them. "
    "Pick a seed, press **Find directions**, then move the sliders. Save an edit you like as a named "
    "direction and apply it to other images; on a text-conditioned model, steer toward or away from a text."
)
#: Concurrent renders per process; bases are always computed one at a time (backend.slots).
DEFAULT_CONCURRENCY = 2
#: Events Gradio runs at once per concurrency group. The service's slots, taken only around
#: actual computation, are the real limit; this only bounds the threads waiting on them, and is
#: wide so that a cached result never queues behind someone's computation.
EVENTS_IN_FLIGHT = 16
#: Page sessions whose state Gradio keeps (it keeps 10 000 by default, ~0.3 MB each: BENCHMARKS.md).
DEFAULT_SESSIONS = 500


def build_demo(service: EigenfaceService) -> gr.Blocks:
    """The page and its API for a service (whose allow-list is the model dropdown)."""
    with gr.Blocks(title=TITLE, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        Page(demo, service)
    demo.queue(default_concurrency_limit=EVENTS_IN_FLIGHT, max_size=64)
    return demo


def launch_options(sessions: int = DEFAULT_SESSIONS) -> dict:
    """Keyword arguments for ``demo.launch`` besides the address (Gradio 6 takes css/theme there)."""
    return {
        "css": CSS, "theme": gr.themes.Soft(), "max_file_size": "1mb", "footer_links": ["api", "gradio"],
        "state_session_capacity": sessions,
    }


# ------------------------------------------------------------------------------------ CLI
def parse_models(text: str | None) -> dict[str, str]:
    """'name=path,name2=path2' -> {name: path}; the built-in models come first unless renamed over."""
    models = builtin_models()
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, sep, source = item.partition("=")
        if not sep or not source.strip():
            raise InputError(f"a model entry looks like name=path, got {item!r}")
        models[check_model_name(name.strip())] = source.strip()
    return models


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve the Eigenface web app.")
    parser.add_argument("--models", default=os.environ.get("EIGENFACE_MODELS"), help="allow-list 'name=path_or_hub_id,...' added to the built-in model (env EIGENFACE_MODELS)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="renders served at the same time")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--cache-mb", type=int, default=1024, help="memory for cached trajectories and bases")
    parser.add_argument("--library", default=os.environ.get("EIGENFACE_LIBRARY") or DEFAULT_LIBRARY, help="folder of saved directions, shared by every visitor (env EIGENFACE_LIBRARY; default %(default)s)")
    parser.add_argument("--boost", choices=["auto", "on", "off"], default="auto", help="quality boosting: stochastic steps with fixed noise for t <= 0.2 T (auto: pixel models only)")
    parser.add_argument("--budget", type=int, default=int(os.environ.get("EIGENFACE_BUDGET") or DEFAULT_BUDGET), help="most U-Net evaluations one request may cost; costlier requests are refused with the price (env EIGENFACE_BUDGET; default %(default)s)")
    parser.add_argument("--sessions", type=int, default=DEFAULT_SESSIONS, help="page sessions whose state is kept in memory; the oldest are dropped (default %(default)s)")
    parser.add_argument("--no-warmup", action="store_true", help="do not load the first model and render its default image before serving")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("eigenface").setLevel(logging.INFO)
    try:
        models = parse_models(args.models)
    except InputError as exc:
        sys.exit(f"error: {exc}")
    device = args.device or ("cuda" if ZERO_GPU else None)
    if args.budget < 1 or args.sessions < 1 or args.concurrency < 1:
        sys.exit("error: --budget, --sessions and --concurrency must be positive")
    service = EigenfaceService(ServiceConfig(
        models=models, cache_bytes=args.cache_mb << 20, device=device, library_dir=args.library, labellers=labellers_for(models),
        budget=args.budget, render_slots=args.concurrency, boost={"auto": None, "on": True, "off": False}[args.boost],
    ))
    if ZERO_GPU:  # models must live in the serving process: every GPU call forks from it
        for name in service.model_names:
            service.model(name)
    elif not args.no_warmup:
        first = service.model_names[0]
        service.generate(EditState(model=first, prompt=service.settings(first).prompt).sample_spec())
    demo = build_demo(service)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options(args.sessions))


if __name__ == "__main__":
    main()
