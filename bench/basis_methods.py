"""The local-basis methods bench_basis.py compares, and how their results are judged.

* :func:`official_basis`: the official algorithm (Park et al. 2023), re-implemented faithfully;
* :func:`eigenface_basis`: ``backend.basis.local_basis`` in one :class:`Variant`;
* :func:`accuracy`: singular values and directions against a long-converged reference
  (:func:`reference_basis`); :func:`fd_check` and :func:`product_timings` are the evidence
  behind the finite-difference JVPs and the batched products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from backend.basis import DEFAULT_FD_EPS, DEFAULT_TOL, local_basis
from backend.geometry import principal_angles
from backend.hspace import jacobian_context
from bench.common import measure


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
