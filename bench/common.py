"""What every bench script shares: the report, the log, the run's environment, measurement,
and the model and x_t the timing benchmarks run on.

Bench scripts run as files (``python bench/bench_basis.py``) and as modules
(``python -m bench.bench_basis``); each puts the repository root on ``sys.path`` and then
imports this module, which keeps the hub offline unless told otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from backend.models import Conditioning, DiffusionModel, load_model  # noqa: E402
from backend.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, initial_noise, render, sample_trajectory, schedule  # noqa: E402
from backend.specs import SampleSpec  # noqa: E402
from backend.testing import RANDOM_SD, random_sd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


# ------------------------------------------------------------------------------------ report
def log(message: str) -> None:
    """Progress on stderr, timestamped; stdout is the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table(header: list[str], rows: list[list]) -> list[str]:
    """A markdown table and the blank line after it."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def fmt(value, spec: str = ".3g") -> str:
    """A number for a table: "-" for a missing one, "inf" for a non-finite one."""
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return format(value, spec)


def pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f}%"


def mark(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


@dataclass
class Report:
    """A markdown report in named sections, printed in ``order`` whatever order they ran in (so
    cheap sections can run first), with the timings table and the numbers behind the tables."""

    order: list[str]
    sections: dict[str, list[str]] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)
    raw: dict = field(default_factory=dict)  # numbers behind the tables, written by flush_raw
    json_path: Path | None = None
    lines: list[str] = field(default_factory=list)  # the section being written

    def section(self, name: str) -> None:
        """Lines added from now on belong to ``name``."""
        self.lines = self.sections.setdefault(name, [])

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list]) -> None:
        self.lines.extend(table(header, rows))

    def flush_raw(self) -> None:
        if self.json_path is not None:
            import json

            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            self.json_path.write_text(json.dumps(self.raw, indent=1))

    def timings_section(self, wall: float | None = None) -> None:
        """(Re)write the "timings" section from :attr:`timings` (and the total wall time, if given)."""
        self.sections["timings"] = ["## Timings", ""] + table(["step", "seconds"], [[n, f"{s:.1f}"] for n, s in self.timings])
        if wall is not None:
            self.sections["timings"] += [f"Total wall time {wall:.0f} s.", ""]

    def text(self) -> str:
        names = self.order + [n for n in self.sections if n not in self.order]
        return "\n".join(line for n in names for line in self.sections.get(n, [])) + "\n"


SizesT = TypeVar("SizesT")


def with_field(sizes: SizesT, name: str, text: str) -> SizesT:
    """A copy of a sizes dataclass with one field parsed from text (``1,2,3`` for a tuple, typed
    like the field's current items; ``0.5`` for a scalar): one parser for every eval's knobs."""
    known = [f.name for f in fields(sizes)]
    if name not in known:
        raise ValueError(f"unknown field {name!r}; fields: {', '.join(known)}")
    current = getattr(sizes, name)
    if isinstance(current, tuple):
        kind = type(current[0]) if current else float
        value = tuple(kind(p.strip()) for p in text.split(",") if p.strip())
    else:
        value = (float if current is None else type(current))(text)
    return replace(sizes, **{name: value})


def provenance() -> str:
    """The commit the numbers come from, and the files that differed from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"commit {head or 'unknown'}" + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


# ------------------------------------------------------------------------------ environment
def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = found.group(1).strip() if found else cpu
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def environment(device: torch.device, argv: list[str] | None, script: str) -> dict:
    import diffusers

    args = sys.argv[1:] if argv is None else argv
    env = {
        "machine": machine_name(device),
        "device": str(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "command": "python " + " ".join(shlex.quote(a) for a in [f"bench/{script}", *args]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if hasattr(os, "getloadavg"):
        env["load_average"] = round(os.getloadavg()[0], 2)  # a shared CPU makes timings noisy
    if device.type == "cuda":
        env["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    return env


def environment_lines(env: dict) -> list[str]:
    load = f", load average {env['load_average']} at start" if "load_average" in env else ""
    tf32 = f", TF32 cudnn={env['tf32']['cudnn']} matmul={env['tf32']['matmul']}" if "tf32" in env else ""
    return [
        f"- machine: {env['machine']}{load}{tf32}",
        f"- torch {env['torch']}, diffusers {env['diffusers']}, python {env['python']}",
        f"- command: `{env['command']}`",
    ]


# ------------------------------------------------------------------------------ measurement
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field_name: str) -> int | None:
    with contextlib.suppress(OSError, AttributeError):
        return int(re.search(rf"{field_name}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    return None


def _release_freed_heap() -> None:
    """Hand memory freed by earlier phases back to the OS (glibc keeps it otherwise), so that the
    RSS baseline of the next measurement is what is really in use."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Measurement:
    seconds: float = 0.0
    cpu_seconds: float | None = None  # process CPU time, all threads (CPU runs: less sensitive to a shared machine)
    peak_mib: float | None = None  # peak allocated (CUDA) or peak RSS (CPU)
    work_mib: float | None = None  # peak minus what was held before (model weights etc.)


@contextlib.contextmanager
def measure(device: torch.device) -> Iterator[Measurement]:
    """Wall time and peak memory of the block (CUDA: allocator peak; CPU: peak RSS, Linux only)."""
    out = Measurement()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _release_freed_heap()
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _status_kib("VmRSS")
        base = None if base is None else base * 1024
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        yield out
    finally:
        _sync(device)
        out.seconds = time.perf_counter() - start
        out.cpu_seconds = None if device.type == "cuda" else time.process_time() - cpu_start
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        else:
            peak = _status_kib("VmHWM")
            peak = None if peak is None else peak * 1024
        if peak is not None and base is not None:
            out.peak_mib, out.work_mib = peak / 2**20, (peak - base) / 2**20


# --------------------------------------------------------------------- the timing benchmarks' model
@dataclass
class BenchModel:
    model: DiffusionModel
    cond: Conditioning | None  # prompt and empty-prompt contexts (random tensors for random models)
    random_weights: bool

    @property
    def context(self) -> Tensor | None:
        return None if self.cond is None else self.cond.cond


def bench_model(name: str, device: torch.device, seed: int = 0, prompt: str = "", sample_size: int | None = None) -> BenchModel:
    """``sd15`` / ``sd-tiny`` (random weights, backend.testing.random_sd), ``builtin``, or a diffusers pipeline directory."""
    if name in RANDOM_SD:
        return BenchModel(*random_sd(name, device, seed, sample_size), True)
    model = load_model(None if name == "builtin" else name, device=device)
    cond = model.encode_prompt(prompt) if model.conditional else None
    return BenchModel(model, cond, False)


@dataclass
class Point:
    x: Tensor  # x_t (*sample_shape), float32 on the model's device
    t: int
    index: int  # position of t in ``timesteps``
    timesteps: tuple[int, ...]
    source: str  # how x_t was made


def bench_point(bm: BenchModel, t_frac: float, steps: int, seed: int, guidance: float = DEFAULT_GUIDANCE) -> Point:
    """x_t at the schedule point nearest t_frac * T: from the seed's DDIM trajectory for trained
    models; a seeded unit-variance Gaussian for random-weight ones (their trajectories mean nothing)."""
    model = bm.model
    timesteps = schedule(model, steps)
    target = t_frac * (model.num_train_timesteps - 1)
    index = min(range(len(timesteps)), key=lambda i: abs(timesteps[i] - target))
    if bm.random_weights:
        x = torch.randn(model.sample_shape, generator=torch.Generator().manual_seed(seed))
        source = f"N(0, I) sample, seed {seed}"
    else:
        x = sample_trajectory(model, seed, steps, bm.cond, guidance).latents[index]
        source = f"DDIM trajectory of seed {seed} ({steps} steps)"
    return Point(x.to(model.device, torch.float32), timesteps[index], index, timesteps, source)


def add_common_arguments(p: argparse.ArgumentParser, kind: str) -> None:
    """The arguments the timing benchmarks share (model, point, budget, output); ``kind`` names the results file."""
    p.add_argument("--model", default="builtin", help="builtin | sd15 | sd-tiny | a diffusers pipeline directory")
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--t-frac", type=float, default=0.6, help="edit timestep as a fraction of T")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps of the schedule x_t lies on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default="", help="prompt for text-conditioned checkpoints")
    p.add_argument("--sample-size", type=int, default=None, help="latent size of the random sd15 / sd-tiny models (default 64 / 16)")
    p.add_argument("--budget-s", type=float, default=None, help="skip the remaining measurements once this much time has passed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is far faster on an oversubscribed shared CPU)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default=None, help=f"results file stem (default {kind}-<model>-<device type>)")


def start_run(args: argparse.Namespace) -> tuple[torch.device, float]:
    """Apply the common arguments' thread count; the device to run on and the start time."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")), time.perf_counter()


def sample_batch(service, model: DiffusionModel, seeds: list[int], steps: int = DEFAULT_STEPS, prompt: str = "") -> Tensor:
    """Samples as the service draws them (seed -> initial noise -> DDIM with the model's own
    conditioning and guidance -> decode), batched, for the evaluations of both built-in models.
    Without quality boosting: its noise follows each sample's seed, so one batch cannot share it
    (the sample statistics in BENCHMARKS.md are of plain DDIM)."""
    from backend.specs import SampleSpec

    spec = SampleSpec(model=model.name, prompt=prompt)
    x = torch.stack([initial_noise(model, s) for s in seeds])
    return render(model, x, schedule(model, steps), service.conditioning(model, prompt), service.guidance(model, spec))


def own_sample(service, model: str, seed: int = 0, prompt: str | None = None) -> SampleSpec:
    """Image ``seed`` of ``model`` with ``prompt``, else with the model's own prompt (its
    eigenface.json's; none for a model without a text encoder). An explicit prompt to such a
    model is passed on, for the service to refuse with its own message."""
    if prompt is None:
        prompt = service.settings(model).prompt if service.model(model).conditional else ""
    return SampleSpec(model=model, seed=seed, prompt=prompt)
