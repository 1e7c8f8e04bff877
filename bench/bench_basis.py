"""Local-basis benchmark (issue 6): the official algorithm against Eigenface's ``local_basis``.

Everything runs in one process on one device, on the same model and the same x_t:

* **reference**: ``local_basis`` run long (tol 1e-7, exact JVPs by default) for k_ref > k
  directions, so that the top k are well resolved;
* **baseline**: the official algorithm (Park et al. 2023, ``local_encoder_pullback_zt``)
  re-implemented faithfully: J V by ``torch.func.jacfwd`` over a scalar step in chunks of 5
  directions (math attention), J^T U by ``torch.autograd.functional.jacobian``, i.e. one reverse
  pass per direction, an SVD to re-orthonormalise, fp32, at least 11 iterations, stop when V
  moves less than 1e-4 elementwise;
* **eigenface**: ``backend.basis.local_basis`` in the variants given by ``--ours``
  (``fd`` = central differences with the fast attention kernels, ``exact`` = forward AD with
  the math kernel; chunk sizes, tolerances, fixed round counts).

Each row reports wall time, peak memory (``torch.cuda.max_memory_allocated`` on CUDA; peak RSS
on the CPU, from ``VmHWM`` after resetting it through ``/proc/self/clear_refs``) and accuracy
against the reference: the largest relative error of the top-k singular values and the angles
between each v_i and the reference's v_i. Angles are only meaningful, and only counted, for
directions whose reference singular value is separated from both neighbours by more than
``--gap`` (relative); the angle of the whole top-k subspace is reported too, marked when the
k-th gap itself is not separated.

Results are appended as a markdown section to ``<out>/<name>.md`` and written as JSON to
``<out>/<name>.json``.

Models: ``builtin`` (assets/catpeople), ``sd15`` (an SD 1.5-architecture U-Net and VAE with
random weights and a random 77x768 text context; for the GPU), ``sd-tiny`` (the same
architecture scaled down, to smoke-test the GPU settings on a CPU), or a diffusers directory.

Usage:
  python bench/bench_basis.py --model builtin --k 8
  python bench/bench_basis.py --model sd-tiny --k 10
  python bench/bench_basis.py --model sd15 --k 10 50 --device cuda     # bench/gpu_bench.sh
  python bench/bench_basis.py --model builtin --k 8 --sweep 8 --ours exact fd   # rounds needed
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from backend.basis import DEFAULT_FD_EPS, DEFAULT_TOL, MAX_K, local_basis  # noqa: E402
from backend.geometry import principal_angles  # noqa: E402
from backend.hspace import bottleneck_fn, jacobian_context  # noqa: E402
from backend.models import Conditioning, DiffusionModel, load_model  # noqa: E402
from backend.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, sample_trajectory, schedule  # noqa: E402

RESULTS = ROOT / "bench" / "results"

# ------------------------------------------------------------------------------------ models
#: SD 1.5's U-Net (860 M parameters at these settings), VAE and DDIM schedule.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SD15_SCHEDULER = dict(
    _class_name="DDIMScheduler", num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon", timestep_spacing="leading",
)
#: The same architecture scaled down (latent 4x16x16, h 64x2x2, 128 px images) for CPU smoke runs.
SD_TINY_UNET = dict(SD15_UNET, sample_size=16, layers_per_block=1, block_out_channels=(32, 64, 64, 64), cross_attention_dim=32)
SD_TINY_VAE = dict(SD15_VAE, block_out_channels=(32, 64, 64, 64), layers_per_block=1, sample_size=128)
RANDOM_SD = {"sd15": (SD15_UNET, SD15_VAE, 77), "sd-tiny": (SD_TINY_UNET, SD_TINY_VAE, 77)}


@dataclass
class BenchModel:
    model: DiffusionModel
    cond: Conditioning | None  # prompt and empty-prompt contexts (random tensors for random models)
    random_weights: bool

    @property
    def context(self) -> Tensor | None:
        return None if self.cond is None else self.cond.cond


def build_random_sd(name: str, device: torch.device, seed: int = 0, sample_size: int | None = None) -> BenchModel:
    """An SD-architecture U-Net + VAE with seeded random weights, built on ``device`` directly.

    ``sample_size`` overrides the latent size. Below 16 for sd-tiny h is 64x1x1, where GroupNorm
    normalises groups of two values and finite differences break down (measured: sigma 12x off).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_cfg, vae_cfg, tokens = RANDOM_SD[name]
    if sample_size:
        unet_cfg = dict(unet_cfg, sample_size=sample_size)
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices), torch.device(device):
        torch.manual_seed(seed)  # seeded weights without disturbing the caller's global RNG
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
    for module in (unet, vae):
        module.to(device).eval().requires_grad_(False)  # .to: in case a buffer was made off-device
    render = torch.float16 if device.type == "cuda" else torch.float32
    model = DiffusionModel(name=f"{name} (random weights)", unet=unet, scheduler_config=dict(SD15_SCHEDULER), device=device, render_dtype=render, vae=vae)
    gen = torch.Generator().manual_seed(seed + 1)
    dim = unet_cfg["cross_attention_dim"]
    cond, uncond = (torch.randn(1, tokens, dim, generator=gen).to(device) for _ in range(2))
    return BenchModel(model, Conditioning("<random context>", cond, uncond), True)


def bench_model(name: str, device: torch.device, seed: int = 0, prompt: str = "", sample_size: int | None = None) -> BenchModel:
    """``sd15`` / ``sd-tiny`` (random weights), ``builtin``, or a diffusers pipeline directory."""
    if name in RANDOM_SD:
        return build_random_sd(name, device, seed, sample_size)
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


# ------------------------------------------------------------------------------ algorithms
@dataclass
class Estimate:
    sigma: Tensor  # (k,) descending, float64 on CPU
    v: Tensor  # (k, n) float64 on CPU
    rounds: int
    converged: bool


def official_basis(
    h_fn: Callable[[Tensor], Tensor], x: Tensor, k: int, *, chunk: int = 5, tol: float = 1e-4, min_iters: int = 11,
    max_iters: int = 50, generator: torch.Generator | None = None,
) -> Estimate:
    """The official power method (Park et al. 2023, ``local_encoder_pullback_zt``), re-implemented.

    Per iteration: U = J V by ``jacfwd`` of h(x + a V_chunk) in the scalar a, one chunk of
    ``chunk`` directions at a time (forward AD needs the math attention kernel); then
    J^T U by ``torch.autograd.functional.jacobian`` of a -> <U, h(x)>, which runs one forward
    and one reverse pass per direction; then V <- right singular vectors of U^T J (sigma^2 are
    its singular values). Stops once V moves less than ``tol`` elementwise (``allclose``), and
    not before ``min_iters`` iterations (the official code's ``i > min_iter`` with min_iter 10).
    """
    n = x.numel()
    x1 = x.detach()[None]
    a0 = torch.zeros((), device=x.device, dtype=x.dtype)
    start = torch.randn(n, k, generator=generator, dtype=torch.float32).to(x)
    v = torch.linalg.qr(start).Q.T.reshape(k, *x.shape)  # (k, *x_shape), orthonormal rows
    s = torch.zeros(k)
    converged = False
    for i in range(max_iters):
        v_prev = v
        parts = []
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            for vi in v.split(chunk):  # (c, *x_shape): x + a * vi broadcasts to a batch of c
                parts.append(torch.func.jacfwd(lambda a, vi=vi: h_fn(x1 + a * vi))(a0).detach())
        u = torch.cat(parts)  # (k, *h_shape) = J V
        flat_u = u.reshape(k, -1)

        def projected(sample: Tensor) -> Tensor:
            return flat_u @ h_fn(sample).reshape(-1)  # (k,) = U^T h(sample)

        jt_u = torch.autograd.functional.jacobian(projected, x1)  # (k, 1, *x_shape), k reverse passes
        _, s, vt = torch.linalg.svd(jt_u.reshape(k, n), full_matrices=False)
        v = vt.reshape(k, *x.shape)
        if i + 1 >= min_iters and torch.allclose(v_prev, v, atol=tol):
            converged = True
            break
    return Estimate(s.sqrt().double().cpu(), v.reshape(k, n).double().cpu(), i + 1, converged)


VJP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Variant:
    """One configuration of ``local_basis``; parsed from ``mode[:key=value...]``, e.g. ``fd:chunk=16:eps=0.01``."""

    mode: str  # "exact" | "fd"
    chunk: int | None = None
    eps: float = DEFAULT_FD_EPS
    block: int | None = None
    tol: float = DEFAULT_TOL
    iters: int = 30
    krylov: int | None = None
    vjp: str | None = None  # autocast dtype of the J^T products, e.g. bf16
    vmap: int | None = None  # 1/0: vectorised or batched J^T products (default: local_basis' choice)

    @classmethod
    def parse(cls, text: str) -> "Variant":
        mode, *items = text.split(":")
        if mode not in ("exact", "fd"):
            raise ValueError(f"variant {text!r}: mode must be 'exact' or 'fd', got {mode!r}")
        kinds = {"chunk": int, "eps": float, "block": int, "tol": float, "iters": int, "krylov": int, "vjp": str, "vmap": int}
        values = {}
        for item in items:
            key, _, value = item.partition("=")
            if key not in kinds:
                raise ValueError(f"variant {text!r}: unknown key {key!r} (use {', '.join(kinds)})")
            values[key] = kinds[key](value)
        if values.get("vjp", None) not in VJP_DTYPES:
            raise ValueError(f"variant {text!r}: vjp must be one of bf16, fp16")
        return cls(mode, **values)

    def label(self) -> str:
        parts = [self.mode + (" (math attn)" if self.mode == "exact" else " (fast attn)")]
        if self.mode == "fd":
            parts.append(f"eps={self.eps:g}")
        parts.append(f"chunk={self.chunk or 'all'}")
        if self.vjp is not None:
            parts.append(f"vjp={self.vjp}")
        if self.vmap is not None:
            parts.append("vmapped vjp" if self.vmap else "batched vjp")
        if self.block is not None:
            parts.append(f"block={self.block}")
        parts.append(f"tol={self.tol:g}" if self.tol > 0 else f"rounds={self.iters}")
        return " ".join(parts)


def eigenface_basis(h_fn, x: Tensor, k: int, variant: Variant, seed: int, max_iters: int | None = None, callback=None) -> Estimate:
    with jacobian_context(variant.mode == "exact"):
        basis = local_basis(
            h_fn, x, k, block_size=variant.block, max_iters=max_iters or variant.iters, tol=variant.tol, max_krylov=variant.krylov,
            chunk_size=variant.chunk, jvp_mode=variant.mode, fd_eps=variant.eps, vjp_dtype=VJP_DTYPES[variant.vjp],
            vectorize_vjp=None if variant.vmap is None else bool(variant.vmap), generator=torch.Generator().manual_seed(seed), callback=callback,
        )
    return Estimate(basis.sigma.double().cpu(), basis.v.reshape(basis.k, -1).double().cpu(), basis.iterations, basis.converged)


# ------------------------------------------------------------------------------ accuracy
def separation(ref_sigma: Tensor, k: int) -> Tensor:
    """Relative gap of each of the top-k reference singular values to its nearer neighbour."""
    s = ref_sigma.double()
    gaps = torch.full((k,), math.inf, dtype=torch.float64)
    for i in range(k):
        if i > 0:
            gaps[i] = min(gaps[i], (s[i - 1] - s[i]) / s[i])
        if i + 1 < s.numel():
            gaps[i] = min(gaps[i], (s[i] - s[i + 1]) / s[i])
    return gaps


def direction_angles(v: Tensor, ref_v: Tensor) -> Tensor:
    """Angle (rad, sign-invariant) between each row of v and the same row of ref_v, via atan2(sin, cos)."""
    v = v / v.norm(dim=1, keepdim=True)
    r = ref_v / ref_v.norm(dim=1, keepdim=True)
    cos = (v * r).sum(dim=1)
    sin = (v - cos[:, None] * r).norm(dim=1)
    return torch.atan2(sin, cos.abs())


def accuracy(est: Estimate, ref: Estimate, gap: float) -> dict:
    k = est.sigma.numel()
    ref_sigma = ref.sigma[:k]
    rel = (est.sigma - ref_sigma).abs() / ref_sigma
    gaps = separation(ref.sigma, k)
    separated = gaps > gap
    angles = direction_angles(est.v, ref.v[:k])
    subspace = float(principal_angles(est.v, ref.v[:k]).max())
    sep_angles = angles[separated]
    # The top-k span is well defined only if sigma_k is separated from sigma_{k+1}.
    kth_gap = float((ref.sigma[k - 1] - ref.sigma[k]) / ref.sigma[k - 1]) if ref.sigma.numel() > k else None
    return {
        "sigma_rel_err_max": float(rel.max()),
        "sigma_rel_err": rel.tolist(),
        "separated": separated.tolist(),
        "n_separated": int(separated.sum()),
        "angle_max_separated": float(sep_angles.max()) if sep_angles.numel() else None,
        "angle_median_separated": float(sep_angles.median()) if sep_angles.numel() else None,
        "angles": angles.tolist(),
        "subspace_angle": subspace,
        "kth_gap": kth_gap,
        "subspace_separated": kth_gap is not None and kth_gap > gap,
    }


# ------------------------------------------------------------------------------ reference
def reference_basis(h_fn, x: Tensor, k_ref: int, specs: list[Variant], seed: int, device: torch.device, cache: Path | None, key: str) -> tuple[Estimate, dict]:
    """The long-converged reference: the first of ``specs`` that fits in memory (cached on disk if asked)."""
    if cache is not None and cache.is_file():
        saved = torch.load(cache, weights_only=False)
        if saved.get("key") == key:
            info = dict(saved["info"], cached=str(cache))
            return Estimate(saved["sigma"], saved["v"], info["rounds"], info["converged"]), info
    last_error = None
    for spec in specs:
        trace: list[tuple[float, float]] = []
        try:
            with measure(device) as m:
                est = eigenface_basis(h_fn, x, k_ref, spec, seed, callback=lambda p: trace.append((float(p.angle), float(p.sigma[-1]))))
        except torch.OutOfMemoryError as exc:
            last_error = exc
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        info = {
            "variant": spec.label(), "k": k_ref, "rounds": est.rounds, "converged": est.converged, "seconds": m.seconds,
            "peak_mib": m.peak_mib, "last_round_angle": trace[-1][0] if trace else None,
        }
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "sigma": est.sigma, "v": est.v, "info": info}, cache)
        return est, info
    raise RuntimeError(f"every reference configuration ran out of memory: {last_error}")


def fd_check(h_fn, x: Tensor, eps_list: list[float], count: int, seed: int, top: Tensor) -> list[dict]:
    """Relative error of the central-difference JVP against the exact one, for ``count`` random unit
    tangents and for the reference's top ``count`` singular directions ``top`` (count, n): the top
    directions respond most strongly and can bend most, so random tangents alone can mislead."""
    from backend.basis import jvp

    gen = torch.Generator().manual_seed(seed)
    rand = torch.randn(count, x.numel(), generator=gen, dtype=torch.float64)
    sets = {"random": rand / rand.norm(dim=1, keepdim=True), "top": top[:count]}
    rows = {eps: {"eps": eps} for eps in eps_list}
    for label, v in sets.items():
        v = v.reshape(-1, *x.shape).to(x)
        with jacobian_context(True):
            exact = jvp(h_fn, x, v, "exact").double()
        for eps in eps_list:
            approx = jvp(h_fn, x, v, "fd", eps).double()
            err = (approx - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)
            rows[eps][f"{label}_rel_err_max"] = float(err.max())
    return list(rows.values())


def product_timings(h_fn, x: Tensor, block: int, device: torch.device, seed: int) -> list[dict]:
    """Time ways of computing J V and J^T U for one block of ``block`` directions (evidence for
    speed ideas): what ``local_basis`` does now (x expanded to a batch, so the primal / forward
    pass is repeated per direction) against vmapped torch.func transforms that compute the
    primal once, one-sided differences, and the official one-reverse-pass-per-direction loop.
    Errors are relative to the batched exact product."""
    from backend.basis import jvp, vjp

    gen = torch.Generator().manual_seed(seed + 7)
    v = torch.linalg.qr(torch.randn(x.numel(), block, generator=gen)).Q.T.reshape(block, *x.shape).to(x)
    single = lambda z: h_fn(z[None])[0]  # noqa: E731  (*x_shape) -> (*h_shape)
    with jacobian_context(True):
        exact = jvp(h_fn, x, v, "exact")
    u = torch.randn(exact.shape, generator=gen).to(x)
    reference_jt = vjp(h_fn, x, u)

    def vmapped_jvp():
        return torch.func.vmap(lambda t: torch.func.jvp(single, (x,), (t,))[1])(v)

    def one_sided(eps=1.0):
        with torch.no_grad():
            out = h_fn(torch.cat([x[None] + eps * v, x[None]]))
        return (out[:-1] - out[-1:]) / eps

    def vmapped_vjp():
        with torch.enable_grad():
            _, pullback = torch.func.vjp(single, x)
            return torch.func.vmap(pullback)(u)[0]

    def official_loop():
        x1 = x[None].detach().requires_grad_(True)
        with torch.enable_grad():
            h = h_fn(x1)[0]
            return torch.stack([torch.autograd.grad(h, x1, grad_outputs=ui, retain_graph=True)[0][0] for ui in u])

    cases = [
        ("J V", "exact, x expanded to a batch (basis.jvp)", True, lambda: jvp(h_fn, x, v, "exact"), exact),
        ("J V", "exact, vmap over tangents (primal once)", True, vmapped_jvp, exact),
        ("J V", "central difference eps=1, 2B forwards (basis.jvp fd)", False, lambda: jvp(h_fn, x, v, "fd", 1.0), exact),
        ("J V", "one-sided difference eps=1, B+1 forwards", False, one_sided, exact),
        ("J^T U", "x expanded to a batch (basis.vjp)", False, lambda: vjp(h_fn, x, u), reference_jt),
        ("J^T U", "vmap over cotangents (forward once)", False, vmapped_vjp, reference_jt),
        ("J^T U", "one forward, one reverse pass per direction (official)", False, official_loop, reference_jt),
    ]
    rows = []
    for product, how, math_attention, fn, truth in cases:
        row = {"product": product, "how": how, "block": block}
        try:
            with jacobian_context(math_attention):
                fn()  # warm-up
                with measure(device) as m:
                    out = fn()
            err = (out.double() - truth.double()).flatten(1).norm(dim=1) / truth.double().flatten(1).norm(dim=1)
            row.update(seconds=m.seconds, cpu_seconds=m.cpu_seconds, peak_mib=m.peak_mib, rel_err_max=float(err.max()))
        except Exception as exc:  # a missing vmap / forward-AD rule is a result here, not a crash
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(f"[bench_basis] product {row}", flush=True)
    return rows


# ------------------------------------------------------------------------------ report
def _fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return format(value, spec)


TABLE_HEADER = (
    "| k | method | rounds | conv | time (s) | CPU time (s) | s/round | peak MiB | +MiB | sigma rel err (max) | separated dirs | "
    "max angle, sep. (rad) | median angle, sep. (rad) | top-k subspace angle (rad) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(row: dict) -> str:
    acc = row.get("accuracy") or {}
    status = row.get("status", "ok")
    if status != "ok":
        return f"| {row['k']} | {row['method']} | {status} | | | | | | | | | | | |"
    sub = acc.get("subspace_angle")
    sub_text = _fmt(sub) + ("" if acc.get("subspace_separated") else " (k-th gap < threshold)") if sub is not None else "-"
    return (
        f"| {row['k']} | {row['method']} | {row['rounds']} | {'yes' if row['converged'] else 'no'} | {_fmt(row['seconds'], '.2f')} | {_fmt(row['cpu_seconds'], '.1f')} | "
        f"{_fmt(row['seconds'] / max(row['rounds'], 1), '.2f')} | {_fmt(row['peak_mib'], '.0f')} | {_fmt(row['work_mib'], '.0f')} | "
        f"{_fmt(acc.get('sigma_rel_err_max'), '.1e')} | {acc.get('n_separated', '-')}/{row['k']} | {_fmt(acc.get('angle_max_separated'), '.2e')} | "
        f"{_fmt(acc.get('angle_median_separated'), '.2e')} | {sub_text} |"
    )


def markdown(result: dict) -> str:
    env, info = result["environment"], result["setup"]
    ref = result["reference"]
    lines = [
        f"## bench_basis: {info['model']}, k = {', '.join(map(str, info['ks']))} ({env['date']})",
        "",
        *environment_lines(env),
        f"- model: {info['model']} ({info['params_m']:.1f} M U-Net parameters), x_t {info['x_shape']} at t = {info['t']} "
        f"(index {info['index']} of a {info['steps']}-step DDIM schedule; {info['x_source']}), h {info['h_shape']}",
        f"- reference: {ref['variant']}, k_ref = {ref['k']}, {ref['rounds']} rounds, converged: {ref['converged']}, "
        f"{_fmt(ref['seconds'], '.1f')} s{' (from cache)' if ref.get('cached') else ''}; last-round subspace change {_fmt(ref.get('last_round_angle'), '.1e')} rad",
        f"- accuracy: sigma error is relative to the reference; angles are between v_i and the reference's v_i and are counted only "
        f"for separated directions (relative sigma gap to both neighbours > {info['gap']:g}); the top-k subspace angle is the largest "
        "principal angle to the reference's top-k span.",
        f"- baseline: the official algorithm (jacfwd in chunks of {info['baseline_chunk']}, one reverse pass per direction, SVD, fp32, "
        f"elementwise tol {info['baseline_tol']:g}, at least {info['baseline_min_iters']} iterations; cap per k: {info['baseline_caps']}).",
    ]
    if result.get("fd_check"):
        checks = ", ".join(f"eps {c['eps']:g}: {c['random_rel_err_max']:.1e} / {c['top_rel_err_max']:.1e}" for c in result["fd_check"])
        lines.append(f"- finite-difference JVP vs exact, max relative error over {info['fd_check_count']} random unit tangents / "
                     f"the reference's top {info['fd_check_count']} directions: {checks}")
    lines += ["", TABLE_HEADER, *(table_row(r) for r in result["rows"])]
    if result.get("products"):
        lines += [
            "",
            f"Jacobian products for one block of {result['products'][0]['block']} directions (after a warm-up; error relative to the batched exact product):",
            "",
            "| product | how | time (s) | CPU time (s) | peak MiB | rel err (max) |",
            "|---|---|---|---|---|---|",
        ]
        for p in result["products"]:
            if "error" in p:
                lines.append(f"| {p['product']} | {p['how']} | failed: {p['error']} | | | |")
            else:
                lines.append(f"| {p['product']} | {p['how']} | {p['seconds']:.3f} | {_fmt(p['cpu_seconds'], '.2f')} | {_fmt(p['peak_mib'], '.0f')} | {p['rel_err_max']:.1e} |")
    if result.get("sweep"):
        lines += [
            "",
            "Rounds sweep (fixed number of rounds, tol = 0; time is for that many rounds):",
            "",
            "| k | variant | rounds | time (s) | CPU time (s) | sigma rel err (max) | max angle, sep. (rad) | median angle, sep. (rad) | top-k subspace angle (rad) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in result["sweep"]:
            a = s["accuracy"]
            lines.append(
                f"| {s['k']} | {s['method']} | {s['rounds']} | {s['seconds']:.2f} | {_fmt(s['cpu_seconds'], '.1f')} | {a['sigma_rel_err_max']:.1e} | "
                f"{_fmt(a['angle_max_separated'], '.2e')} | {_fmt(a['angle_median_separated'], '.2e')} | {a['subspace_angle']:.2e} |"
            )
    return "\n".join(lines) + "\n\n"


def write_results(result: dict, out: Path, name: str, md_prefix: str) -> None:
    """Rewrite ``<name>.json`` and this run's section of ``<name>.md`` (earlier runs' sections are kept),
    after every row, so that a run cut off by a timeout still leaves its finished rows."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    if "reference" in result:
        (out / f"{name}.md").write_text(md_prefix + markdown(result))


# ------------------------------------------------------------------------------ main
def parse_caps(text: str) -> Callable[[int], int]:
    """``20`` (every k) or ``10:20,50:11`` (per k; the largest listed k <= k applies, else the first)."""
    if ":" not in text:
        value = int(text)
        return lambda k: value
    pairs = sorted((int(a), int(b)) for a, b in (item.split(":") for item in text.split(",")))
    return lambda k: next((cap for kk, cap in reversed(pairs) if kk <= k), pairs[0][1])


def add_common_arguments(p: argparse.ArgumentParser, kind: str) -> None:
    """The arguments every bench script shares (model, point, budget, output); ``kind`` names the results file."""
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, "basis")
    p.add_argument("--k", type=int, nargs="+", default=[8])
    p.add_argument("--ours", nargs="+", default=["fd", "exact"], help="local_basis variants: mode[:chunk=N][:eps=E][:block=B][:tol=T][:iters=I][:krylov=K][:vjp=bf16][:vmap=0|1]")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--baseline-chunk", type=int, default=5)
    p.add_argument("--baseline-tol", type=float, default=1e-4)
    p.add_argument("--baseline-min-iters", type=int, default=11)
    p.add_argument("--baseline-max-iters", default="20", help="'N' or per k 'k:N,...' (e.g. 10:20,50:11)")
    p.add_argument("--reference", nargs="+", default=["exact:tol=1e-7:iters=60"], help="reference variants, tried in order (the next on OOM)")
    p.add_argument("--ref-k", type=int, default=None, help="default min(64, max(k) + 20)")
    p.add_argument("--ref-cache", type=Path, default=None, help="save/reuse the reference here (keyed by model, x_t and settings)")
    p.add_argument("--gap", type=float, default=0.01, help="relative sigma gap that makes a direction 'separated'")
    p.add_argument("--sweep", type=int, default=0, help="also run each --ours variant for 1..N fixed rounds (cost grows as N^2)")
    p.add_argument("--fd-check", default="", help="comma-separated fd_eps values to check against the exact JVP, e.g. 1e-3,1e-2,1e-1,1")
    p.add_argument("--fd-check-count", type=int, default=4)
    p.add_argument("--products", type=int, default=0, help="also time J V / J^T U implementations for a block of this many directions")
    p.add_argument("--tf32", action="store_true", help="leave TF32 on (CUDA); off by default since it ruins finite differences")
    return p


def start_run(args: argparse.Namespace) -> tuple[torch.device, float]:
    """Apply the common arguments' thread count; the device to run on and the start time."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")), time.perf_counter()


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    device, started = start_run(args)
    if device.type == "cuda" and not args.tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    if any(not 1 <= k <= MAX_K for k in args.k):
        raise SystemExit(f"--k values must be within [1, {MAX_K}], got {args.k}")
    variants = [Variant.parse(v) for v in args.ours]
    ref_specs = [Variant.parse(v) for v in args.reference]
    k_ref = args.ref_k or min(MAX_K, max(args.k) + 20)
    caps = parse_caps(args.baseline_max_iters)
    label = Path(args.model).name if Path(args.model).is_dir() else args.model
    name = args.name or f"basis-{label}-{device.type}"
    md_file = args.out / f"{name}.md"
    md_prefix = md_file.read_text() if md_file.is_file() else ""  # this run's section goes after earlier runs'

    bm = bench_model(args.model, device, args.seed, args.prompt, args.sample_size)
    point = bench_point(bm, args.t_frac, args.steps, args.seed)
    h_fn = bottleneck_fn(bm.model, point.t, bm.context)
    x = point.x
    with torch.no_grad():
        h_shape = tuple(h_fn(x[None]).shape[1:])
    result = {
        "environment": environment(device, argv, "bench_basis.py"),
        "setup": {
            "model": bm.model.name, "params_m": sum(p.numel() for p in bm.model.unet.parameters()) / 1e6, "x_shape": "x".join(map(str, x.shape)),
            "h_shape": "x".join(map(str, h_shape)), "t": point.t, "index": point.index, "steps": args.steps, "x_source": point.source,
            "ks": args.k, "gap": args.gap, "baseline_chunk": args.baseline_chunk, "baseline_tol": args.baseline_tol,
            "baseline_min_iters": args.baseline_min_iters, "baseline_caps": {k: max(caps(k), args.baseline_min_iters) for k in args.k},
            "fd_check_count": args.fd_check_count,
        },
        "rows": [],
    }
    print(f"[bench_basis] {bm.model.name}: x {tuple(x.shape)} -> h {h_shape} at t={point.t}; {result['environment']['machine']}", flush=True)

    # Warm-up (kernel selection, lazy init) so that the first method timed does not pay for it.
    eigenface_basis(h_fn, x, 1, Variant("fd", tol=0, iters=2, block=2), args.seed)
    eigenface_basis(h_fn, x, 1, Variant("exact", tol=0, iters=1, block=2), args.seed)

    key_src = f"{bm.model.name}|{args.seed}|{point.t}|{k_ref}|{[s.label() for s in ref_specs]}|{float(x.double().sum()):.10e}|{torch.__version__}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    ref, ref_info = reference_basis(h_fn, x, k_ref, ref_specs, args.seed + 1000, device, args.ref_cache, key)
    result["reference"] = ref_info
    print(f"[bench_basis] reference: {ref_info}", flush=True)
    if args.fd_check:
        result["fd_check"] = fd_check(h_fn, x, [float(e) for e in args.fd_check.split(",")], args.fd_check_count, args.seed, ref.v)
        print(f"[bench_basis] fd check: {result['fd_check']}", flush=True)
    write_results(result, args.out, name, md_prefix)

    def over_budget() -> bool:
        return args.budget_s is not None and time.perf_counter() - started > args.budget_s

    def record(k: int, method: str, run: Callable[[list], Estimate]) -> None:
        row = {"k": k, "method": method}
        trace: list[dict] = []  # per round (local_basis only): largest angle to the previous round's span, top-k sigma
        if over_budget():
            row["status"] = "skipped (time budget)"
        else:
            try:
                with measure(device) as m:
                    est = run(trace)
                row.update(status="ok", rounds=est.rounds, converged=est.converged, seconds=m.seconds, cpu_seconds=m.cpu_seconds, peak_mib=m.peak_mib, work_mib=m.work_mib,
                           sigma=est.sigma.tolist(), accuracy=accuracy(est, ref, args.gap), trace=trace)
            except torch.OutOfMemoryError:
                row["status"] = "out of memory"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        result["rows"].append(row)
        print(f"[bench_basis] {table_row(row)}", flush=True)
        write_results(result, args.out, name, md_prefix)

    for k in args.k:
        if not args.no_baseline:
            cap = max(caps(k), args.baseline_min_iters)
            record(k, f"official baseline (cap {cap} it)", lambda _: official_basis(
                h_fn, x, k, chunk=args.baseline_chunk, tol=args.baseline_tol, min_iters=args.baseline_min_iters, max_iters=cap,
                generator=torch.Generator().manual_seed(args.seed)))
        for variant in variants:
            record(k, f"eigenface {variant.label()}", lambda trace: eigenface_basis(
                h_fn, x, k, variant, args.seed, callback=lambda p: trace.append({"round": p.iteration, "angle": p.angle, "sigma": p.sigma.tolist()})))

    if args.products and not over_budget():
        result["products"] = product_timings(h_fn, x, args.products, device, args.seed)
        write_results(result, args.out, name, md_prefix)
    if args.sweep:
        result["sweep"] = []
        for k in args.k:
            for variant in variants:
                for rounds in range(1, args.sweep + 1):
                    if over_budget():
                        break
                    with measure(device) as m:
                        est = eigenface_basis(h_fn, x, k, replace(variant, tol=0.0), args.seed, max_iters=rounds)
                    entry = {"k": k, "method": variant.label().rsplit(" tol=", 1)[0], "rounds": rounds, "seconds": m.seconds, "cpu_seconds": m.cpu_seconds, "accuracy": accuracy(est, ref, args.gap)}
                    result["sweep"].append(entry)
                    print(f"[bench_basis] sweep {entry['method']} r={rounds}: {m.seconds:.2f} s, max sep angle {_fmt(entry['accuracy']['angle_max_separated'])}", flush=True)
    result["seconds_total"] = time.perf_counter() - started
    write_results(result, args.out, name, md_prefix)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
