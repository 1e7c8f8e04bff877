"""Fixtures only the tests need: the service the app tests serve, and a served demo.

The tiny stand-in checkpoints themselves come from :mod:`backend.testing`, which the
benchmarks share.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def app_service(tiny_ddpm_dir: Path, tiny_sd_dir: Path, library_dir: Path):
    """The service the app tests serve: the tiny pixel and SD models, a private direction library,
    and the cat-people labeller on the tiny model (it renders edits and reads factors from any image,
    so "Name the sliders" works there too). Saves are not paced (the tests save several in a row;
    tests/test_limits.py tests the pace)."""
    from backend.catpeople.semantics import name_by_factor
    from backend.service import EigenfaceService, ServiceConfig

    return EigenfaceService(ServiceConfig(
        models={"tiny": str(tiny_ddpm_dir), "sd": str(tiny_sd_dir)}, library_dir=str(library_dir), labellers={"tiny": name_by_factor},
        save_interval_s=0.0,
    ))


@contextmanager
def launched(demo) -> Iterator[str]:
    """Serve a Gradio demo on a free loopback port for the duration; yields its URL."""
    import app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_options())
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
