"""Many users at once: simulated users drive the app's public API on a loopback server.

Each user has its own seed, finds its directions once, then moves sliders (previews and
full-quality renders) for a bounded number of requests. Every image a user gets is checked
against the image the service renders for exactly that user's request on its own, so a
cross-session mix-up cannot pass. Traffic goes to 127.0.0.1 only, and both the number of
requests and the wall time are bounded.

    python bench/load_test.py --users 8 --requests 6 --model tiny    # a tiny random model (fast)
    python bench/load_test.py --users 8 --requests 4                 # the built-in model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from backend.service import EigenfaceService, ServiceConfig  # noqa: E402
from backend.state import EditState  # noqa: E402
from ui.common import PREVIEW_STEPS  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pixels(result) -> bytes:
    path = result if isinstance(result, str) else result[0]
    return np.asarray(Image.open(path).convert("RGB")).tobytes()


def _user(url: str, model: str, seed: int, k: int, steps: int, requests: int, deadline: float, log: list, errors: list) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    rng = random.Random(seed)
    base = dict(model=model, prompt="", seed=seed, timestep=0.6, k=k, steps=steps)
    start = time.perf_counter()
    try:
        client.predict(*base.values(), api_name="/find_directions")
        log.append(("find_directions", time.perf_counter() - start, seed, None, None))
    except Exception as exc:  # noqa: BLE001 - a load test counts every failure
        errors.append(f"user {seed} find_directions: {exc}")
        return
    for _ in range(requests):
        if time.perf_counter() > deadline:
            break
        sliders = {str(rng.randrange(k)): round(rng.uniform(-0.5, 0.5), 2)}
        preview = rng.random() < 0.5
        start = time.perf_counter()
        try:
            result = client.predict(*base.values(), "direct", json.dumps(sliders), preview, api_name="/render")
            log.append(("render-preview" if preview else "render", time.perf_counter() - start, seed, sliders, _pixels(result)))
        except Exception as exc:  # noqa: BLE001
            errors.append(f"user {seed} render: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6, help="slider renders per user after finding directions")
    parser.add_argument("--model", choices=["builtin", "tiny"], default="tiny")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--out", default=None, help="append the markdown report to this file")
    args = parser.parse_args()

    import app
    import torch

    if args.model == "tiny":
        from tests.fixtures import save_tiny_ddpm

        models = {"tiny": str(save_tiny_ddpm(Path(tempfile.mkdtemp()) / "tiny"))}
    else:
        models = {"catpeople": str(app.BUILTIN_MODEL)}
    name = next(iter(models))
    service = EigenfaceService(ServiceConfig(models=models, device="cpu", cache_bytes=256 << 20))
    demo = app.build_demo(service)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"

    log: list = []
    errors: list[str] = []
    deadline = time.perf_counter() + args.max_seconds
    wall = time.perf_counter()
    threads = [
        threading.Thread(target=_user, args=(url, name, seed, args.k, args.steps, args.requests, deadline, log, errors))
        for seed in range(args.users)
    ]
    for thread in threads:
        thread.start()
    # the server must stay responsive meanwhile: time loading the page itself, every 2 s
    probe_times = []
    while any(t.is_alive() for t in threads) and time.perf_counter() < deadline:
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
        probe_times.append(time.perf_counter() - start)
        time.sleep(2)
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.perf_counter()))
    wall = time.perf_counter() - wall

    # Every rendered image must equal what the service alone gives for that user's request.
    mixups = 0
    for kind, _, seed, sliders, pixels in log:
        if pixels is None:
            continue
        state = EditState(model=name, seed=seed, timestep=0.6, k=args.k, steps=args.steps).with_sliders({int(i): v for i, v in sliders.items()})
        expected = service.edit(state.basis_spec(), state.strengths(), "direct", preview_steps=PREVIEW_STEPS if kind == "render-preview" else None)
        mixups += np.asarray(expected.convert("RGB")).tobytes() != pixels
    demo.close()

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"### Load test: {args.users} users, model `{name}`, k={args.k}, {args.steps} DDIM steps",
        "",
        f"Machine: {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {platform.python_version()}; "
        f"command: `python bench/load_test.py --users {args.users} --requests {args.requests} --model {args.model} --k {args.k} --steps {args.steps}`",
        "",
        "| request | served | p50 s | p95 s | max s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind in ("find_directions", "render-preview", "render"):
        times = np.array([t for kd, t, *_ in log if kd == kind])
        if len(times):
            lines.append(f"| {kind} | {len(times)} | {np.percentile(times, 50):.2f} | {np.percentile(times, 95):.2f} | {times.max():.2f} |")
    probe = np.array(probe_times) if probe_times else np.array([0.0])
    lines += [
        "",
        f"Requests served: {len(log)} in {wall:.1f} s; errors: {len(errors)}; images not matching the user's own request: {mixups}; "
        f"page load while under load: p50 {np.percentile(probe, 50):.2f} s, max {probe.max():.2f} s; "
        f"peak RSS of the server process: {peak_mb:.0f} MB.",
    ]
    lines += [f"- error: {e}" for e in errors[:10]]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(report + "\n")
    sys.exit(1 if errors or mixups else 0)


if __name__ == "__main__":
    main()
