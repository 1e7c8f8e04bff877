"""Shared pytest setup: offline hub, no telemetry, tiny stand-in checkpoints."""

import os
import sys
from pathlib import Path

# Must be set before huggingface_hub / gradio are imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

# Make `tests.fixtures` importable however pytest is invoked (`pytest` or
# `python -m pytest`, with or without tests/__init__.py).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pytest  # noqa: E402

from backend.testing import save_tiny_ddpm, save_tiny_sd  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ddpm_dir(tmp_path_factory) -> Path:
    """A tiny unconditional DDPM checkpoint (pixels 3x16x16, h-space 32x8x8)."""
    return save_tiny_ddpm(tmp_path_factory.mktemp("tiny_ddpm") / "ckpt")


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """A tiny Stable-Diffusion checkpoint (latent 4x8x8, h-space 64x4x4, 16 px)."""
    return save_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "ckpt")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tests run tiny models, dominated by OpenMP overhead: one thread is several times faster
    (and steadier on a shared 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
