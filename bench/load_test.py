"""Adversarial load test: ordinary visitors and abusive clients against ``python app.py`` on loopback.

The server is the real entry point, started as a subprocess with the host's flags (budget,
sessions, cache). Then, at the same time:

* ``--users`` ordinary visitors (``gradio_client``): each finds the directions of its own seed,
  then moves sliders (previews and full renders). Every image is compared with what the
  service alone renders for exactly that request, so a cross-session mix-up cannot pass.
* a *costly* client: requests past the page's ranges and over the budget (which must be
  refused at once), then the costliest request the budget allows, abandoned after a second,
  over and over, alternating ``/cancel`` and a closed event stream; after each, a probe times
  how soon a fresh basis gets the heavy slot again.
* a *spamming* client: saves directions as fast as it can from one session (the pace and the
  quota must refuse), then from fresh sessions (a new session hash per save), and churns
  ``--churn`` fresh sessions through ``queue/join`` with a cached call (the session-memory probe
  of issue 17).

It reports errors and mix-ups seen by the ordinary visitors, their render p50/p95, the
server's peak RSS (sampled from /proc) against the ceiling README.md documents, and what the
abusive clients got. Traffic goes to 127.0.0.1 only; requests and wall time are bounded.

    python bench/load_test.py --model tiny                      # a tiny random model (fast)
    python bench/load_test.py --model builtin --k 4 --requests 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from backend.models import BUILTIN_MODEL  # noqa: E402
from backend.service import EigenfaceService, ServiceConfig  # noqa: E402
from backend.specs import PREVIEW_STEPS  # noqa: E402
from backend.state import EditState  # noqa: E402
from backend.store import DirectionLibrary  # noqa: E402
from backend.testing import save_tiny_ddpm  # noqa: E402
from bench.common import environment, environment_lines, provenance  # noqa: E402

#: The RSS ceiling README.md documents: the idle server, plus its cache, plus each kept page
#: session, plus what requests in flight hold (activations, images, Gradio's buffers, and what
#: the allocator keeps after them). Measured with the built-in model: 8 visitors' bases, ranges
#: and renders beside the costly client's abandoned k = 32 bases peaked about 990 MB over idle
#: plus cache plus sessions (BENCHMARKS.md, Adversarial load); 1 100 MB leaves a tenth spare.
SESSION_MB = 0.35
IN_FLIGHT_MB = 1100
#: Largest pixel difference (of 255) still counted as the visitor's own image: float noise.
NEAR_LEVELS = 2


def rss_ceiling_mb(idle_mb: float, cache_mb: int, sessions: int) -> float:
    return idle_mb + cache_mb + sessions * SESSION_MB + IN_FLIGHT_MB


# ------------------------------------------------------------------------------ server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, models: str | None, library: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [
        sys.executable, str(ROOT / "app.py"), "--port", str(port), "--library", str(library), "--budget", str(args.budget),
        "--sessions", str(args.sessions), "--cache-mb", str(args.cache_mb), "--no-warmup",
    ] + (["--models", models] if models else [])
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(library.parent / "server.log", "w"))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return server, url
        except OSError:
            if server.poll() is not None:
                sys.exit(f"the server exited: see {library.parent / 'server.log'}")
            time.sleep(1)
    server.kill()
    sys.exit("the server did not start within 3 minutes")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return


def fn_index(url: str, api_name: str) -> int:
    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    return next(dep["id"] for dep in config["dependencies"] if dep.get("api_name") == api_name)


def join(url: str, index: int, data: list, session: str) -> None:
    """One raw ``queue/join`` (what a browser sends), under ``session``."""
    body = json.dumps({"data": data, "fn_index": index, "session_hash": session, "event_data": None, "trigger_id": None}).encode()
    request = urllib.request.Request(url + "gradio_api/queue/join", body, {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()


def join_and_hang_up(url: str, index: int, data: list, seconds: float) -> None:
    """Join, listen to the event stream for ``seconds``, then close the connection (a tab closed)."""
    session = uuid.uuid4().hex[:10]
    join(url, index, data, session)
    stream = urllib.request.urlopen(url + f"gradio_api/queue/data?session_hash={session}", timeout=60)
    end = time.time() + seconds
    while time.time() < end:
        stream.readline()
    stream.close()


def _pixels(result) -> bytes:
    path = result if isinstance(result, str) else result[0]
    return np.asarray(Image.open(path).convert("RGB")).tobytes()


# ------------------------------------------------------------------------------ clients
def ordinary(url: str, base: dict, requests: int, deadline: float, log: list, errors: list) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    rng = random.Random(base["seed"])
    start = time.perf_counter()
    try:
        client.predict(*base.values(), api_name="/find_directions")
        log.append(("find_directions", time.perf_counter() - start, base["seed"], None, None))
    except Exception as exc:  # noqa: BLE001 - a load test counts every failure
        errors.append(f"visitor {base['seed']} find_directions: {exc}")
        return
    for _ in range(requests):
        if time.perf_counter() > deadline:
            break
        sliders = {str(rng.randrange(base["k"])): round(rng.uniform(-0.5, 0.5), 2)}
        preview = rng.random() < 0.5
        start = time.perf_counter()
        try:
            result = client.predict(*base.values(), "direct", json.dumps(sliders), preview, api_name="/render")
            log.append(("render-preview" if preview else "render", time.perf_counter() - start, base["seed"], sliders, _pixels(result)))
        except Exception as exc:  # noqa: BLE001
            errors.append(f"visitor {base['seed']} render: {exc}")


def costly(url: str, model: str, costliest: dict, stop: threading.Event, report: dict) -> None:
    """Refused requests first, then the costliest allowed one, abandoned after a second, repeatedly."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    for what, call in {
        "find_directions, steps 1000": lambda: client.predict(model, "", 1, 1.0, 64, 1000, api_name="/find_directions"),
        "name_directions, k 64, steps 100": lambda: client.predict(model, "", 1, 1.0, 64, 100, api_name="/name_directions"),
        "render, sliders nested 30 000 deep": lambda: client.predict(model, "", 1, 0.6, 4, 10, "direct", "[" * 30000 + "]" * 30000, False, api_name="/render"),
        "render, a 5 000-digit slider": lambda: client.predict(model, "", 1, 0.6, 4, 10, "direct", "[" + "7" * 5000 + "]", False, api_name="/render"),
        "save_direction, source ²": lambda: client.predict(model, "", 1, 0.6, 4, 10, "[]", "²", "squared", api_name="/save_direction"),
    }.items():
        start = time.perf_counter()
        try:
            call()
            report.setdefault("accepted", []).append(what)
        except Exception as exc:  # noqa: BLE001
            report.setdefault("refused", []).append(f"{what}: {str(exc)[:160]} ({time.perf_counter() - start:.2f} s)")
    find = fn_index(url, "find_directions")
    probe = Client(url, verbose=False)
    seed = 1000
    while not stop.is_set():
        seed += 1
        settings = {**costliest, "seed": seed}
        if seed % 2:
            job = client.submit(*settings.values(), api_name="/find_directions")
            time.sleep(1.0)
            job.cancel()
            how = "cancel"
        else:
            join_and_hang_up(url, find, list(settings.values()), 1.0)
            how = "hang-up"
        start = time.perf_counter()
        try:
            probe.predict(model, "", seed + 10_000, 0.6, 1, 2, api_name="/find_directions")  # a fresh, cheap basis: needs the heavy slot
            report.setdefault("slot_free_after_s", []).append((how, time.perf_counter() - start))
        except Exception as exc:  # noqa: BLE001
            report.setdefault("probe_errors", []).append(str(exc)[:160])


def spammer(url: str, model: str, churn: int, report: dict) -> None:
    """Saves from one session as fast as possible, then one save per fresh session, then session churn."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    saved = refused = 0
    messages: set[str] = set()
    for i in range(60):
        try:
            client.predict(model, "", 2, 0.6, 2, 4, "[]", "0", f"spam {i}", api_name="/save_direction")
            saved += 1
        except Exception as exc:  # noqa: BLE001
            refused += 1
            messages.add(str(exc).split(":")[0][:80])
    report["one session"] = f"{saved} saved, {refused} refused ({'; '.join(sorted(messages))})"
    save, find = fn_index(url, "save_direction"), fn_index(url, "find_directions")
    for i in range(40):  # a fresh session per save evades the per-session quota; LRU eviction bounds it
        join(url, save, [model, "", 2, 0.6, 2, 4, "[]", "1", f"fresh {i}"], uuid.uuid4().hex[:10])
    before = time.perf_counter()
    for i in range(churn):
        join(url, find, [model, "", 2, 0.6, 2, 4], uuid.uuid4().hex[:10])  # cached: no computation, only session state
    report["churn"] = f"{churn} fresh sessions in {time.perf_counter() - before:.1f} s"


# ------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6, help="slider renders per visitor after finding directions")
    parser.add_argument("--model", choices=["builtin", "tiny"], default="tiny")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--timestep", type=float, default=0.6)
    parser.add_argument("--budget", type=int, default=4000, help="the server's --budget")
    parser.add_argument("--sessions", type=int, default=500, help="the server's --sessions")
    parser.add_argument("--cache-mb", type=int, default=256, help="the server's --cache-mb")
    parser.add_argument("--churn", type=int, default=1500, help="fresh sessions the spammer opens")
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--out", default=None, help="append the markdown report to this file")
    args = parser.parse_args()
    env = environment(torch.device("cpu"), None, "load_test.py")

    work = Path(tempfile.mkdtemp(prefix="eigenface-load-"))
    if args.model == "tiny":
        name, path = "tiny", str(save_tiny_ddpm(work / "tiny"))
        models_flag = f"tiny={path}"
    else:
        name, path, models_flag = "catpeople", str(BUILTIN_MODEL), None
    library = work / "library"
    host = DirectionLibrary(library)
    host.save("host placed", torch.randn(3), {"note": "placed by the host"})
    host_bytes = (library / "host placed.safetensors").read_bytes()

    server, url = start_server(args, models_flag, library)
    sampler = RssSampler(server.pid)
    sampler.start()
    try:
        from gradio_client import Client

        Client(url, verbose=False).predict(name, "", 2, 0.6, 2, 4, api_name="/find_directions")  # warm: the model is loaded
        idle_mb = rss_mb(server.pid)
        costliest = {"model": name, "prompt": "", "seed": 0, "timestep": 1.0, "k": 32, "steps": 100}
        log: list = []
        errors: list[str] = []
        abuse: dict = {}
        stop = threading.Event()
        deadline = time.perf_counter() + args.max_seconds
        wall = time.perf_counter()
        visitors = [
            threading.Thread(target=ordinary, args=(url, dict(model=name, prompt="", seed=seed, timestep=args.timestep, k=args.k, steps=args.steps), args.requests, deadline, log, errors))
            for seed in range(args.users)
        ]
        abusers = [
            threading.Thread(target=costly, args=(url, name, costliest, stop, abuse.setdefault("costly", {})), daemon=True),
            threading.Thread(target=spammer, args=(url, name, args.churn, abuse.setdefault("spammer", {})), daemon=True),
        ]
        for thread in visitors + abusers:
            thread.start()
        for thread in visitors:
            thread.join(timeout=max(1.0, deadline - time.perf_counter()))
        wall = time.perf_counter() - wall
        stop.set()
        for thread in abusers:
            thread.join(timeout=max(60.0, deadline - time.perf_counter()))
        sampler.stop.set()
        peak_mb = max(sampler.peak, rss_mb(server.pid))
        library_size = len(list(library.glob("*.safetensors")))
        host_intact = (library / "host placed.safetensors").read_bytes() == host_bytes
    finally:
        server.terminate()
        server.wait(timeout=30)

    # Every rendered image must equal what the service alone gives for that visitor's request
    # (the page shows the generated image itself when every slider is at zero). A basis computed
    # in another process can differ in the last float bits, so a pixel may be off by one level:
    # that is counted apart; a mix-up (another visitor's image) differs everywhere.
    service = EigenfaceService(ServiceConfig(models={name: path}, device="cpu"))
    exact = near = mixups = 0
    for kind, _, seed, sliders, pixels in log:
        if pixels is None:
            continue
        state = EditState(model=name, seed=seed, timestep=args.timestep, k=args.k, steps=args.steps).with_sliders({int(i): v for i, v in sliders.items()})
        if state.strengths():
            expected = service.edit(state.basis_spec(), state.strengths(), "direct", preview_steps=PREVIEW_STEPS if kind == "render-preview" else None)
        else:
            expected = service.generate(state.sample_spec())
        got, want = np.frombuffer(pixels, np.uint8).astype(int), np.asarray(expected.convert("RGB")).reshape(-1).astype(int)
        difference = int(np.abs(got - want).max())
        exact += difference == 0
        near += 0 < difference <= NEAR_LEVELS
        mixups += difference > NEAR_LEVELS

    ceiling = rss_ceiling_mb(idle_mb, args.cache_mb, args.sessions)
    renders = np.array([t for kind, t, *_ in log if kind.startswith("render")] or [float("nan")])
    lines = [
        f"### Adversarial load test: {args.users} visitors + 2 abusive clients, model `{name}`, k={args.k}, {args.steps} DDIM steps",
        "",
        *environment_lines(env),
        f"- load average at the end: {os.getloadavg()[0]:.1f}; {provenance()}",
        "",
        "| ordinary visitors' request | served | p50 s | p95 s | max s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind in ("find_directions", "render-preview", "render"):
        times = np.array([t for kd, t, *_ in log if kd == kind])
        if len(times):
            lines.append(f"| {kind} | {len(times)} | {np.percentile(times, 50):.2f} | {np.percentile(times, 95):.2f} | {times.max():.2f} |")
    lines.append(f"| every render | {len(renders)} | {np.percentile(renders, 50):.2f} | {np.percentile(renders, 95):.2f} | {renders.max():.2f} |")
    frees = abuse.get("costly", {}).get("slot_free_after_s", [])
    lines += [
        "",
        f"Ordinary visitors: {len(log)} requests in {wall:.1f} s; **errors: {len(errors)}; images not matching the visitor's own request: {mixups}** "
        f"({exact} identical to the service's own render, {near} within {NEAR_LEVELS}/255 of it); "
        f"render p95 {np.percentile(renders, 95):.2f} s ({'within' if np.percentile(renders, 95) <= 1.0 else 'NOT within'} 1 s).",
        f"Server RSS: idle {idle_mb:.0f} MB, peak {peak_mb:.0f} MB; documented ceiling for these flags {ceiling:.0f} MB "
        f"({'within' if peak_mb <= ceiling else 'OVER'}).",
        f"Library after the spam: {library_size} files; the host's direction {'intact' if host_intact else 'CHANGED OR GONE'}.",
        "",
        "Costly client, refused at once:",
        *[f"- {line}" for line in abuse.get("costly", {}).get("refused", [])],
        *[f"- ACCEPTED (should have been refused): {line}" for line in abuse.get("costly", {}).get("accepted", [])],
        f"- abandoned costliest requests (k=32, 100 steps, t=1.0): {len(frees)}; a fresh basis then got the heavy slot and finished in "
        + (", ".join(f"{seconds:.1f} s ({how})" for how, seconds in frees[:8]) or "(none)"),
        f"- probe errors: {len(abuse.get('costly', {}).get('probe_errors', []))}",
        f"Spamming client: one session: {abuse.get('spammer', {}).get('one session', '?')}; churn: {abuse.get('spammer', {}).get('churn', '?')}.",
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
