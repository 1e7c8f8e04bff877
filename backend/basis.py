"""The local latent basis: top right-singular vectors of J = dh/dx, without ever forming J.

Randomised block Krylov iteration with Rayleigh-Ritz (see :func:`local_basis`): each round
costs one batched JVP (J Q) and one batched VJP (J^T Y) for a whole block of directions, so
k = 50 directions take a handful of passes rather than one reverse pass per direction.

``h_fn`` maps a batch (B, *x_shape) to (B, *h_shape) with batch elements independent (a
U-Net is), so a block of directions is evaluated as one batch around the same point.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Generator, Literal, Sequence, TypeVar

import torch
from torch import Tensor

HFn = Callable[[Tensor], Tensor]
JvpMode = Literal["exact", "fd"]

MAX_K = 64

# vmap loops over ops without a batching rule (the CPU's fused attention backward among them)
# and warns every call; the vectorised reverse pass is chosen where it measured faster anyway.
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching rule")


@dataclass(frozen=True)
class Basis:
    """Top-k singular triplets of J at one point x.

    sigma: (k,) descending (an edit-prompt basis: by its share of the prompt's change,
    concepts.order_by_change).  v: (k, *x_shape), unit L2 norm.  u: (k, *h_shape), u_i = J v_i / sigma_i.
    """

    sigma: Tensor
    v: Tensor
    u: Tensor
    iterations: int
    converged: bool

    @property
    def k(self) -> int:
        return self.sigma.shape[0]

    def to(self, device: torch.device | str) -> "Basis":
        return Basis(self.sigma.to(device), self.v.to(device), self.u.to(device), self.iterations, self.converged)


@dataclass(frozen=True)
class BasisProgress:
    """What a progress callback sees after each round."""

    iteration: int
    max_iters: int
    sigma: Tensor  # current Ritz values, top k
    angle: float  # largest principal angle (rad) between this round's top-k subspace and the last


def _single(h_fn: HFn) -> Callable[[Tensor], Tensor]:
    """h for one unbatched sample, as torch.func transforms want it."""
    return lambda x: h_fn(x[None])[0]


#: Defaults of :func:`local_basis`, shared with the benchmark so that its "fd" is the service's.
DEFAULT_TOL = 3e-4
DEFAULT_FD_EPS = 0.1


def jvp(h_fn: HFn, x: Tensor, v: Tensor, mode: JvpMode = "exact", fd_eps: float = DEFAULT_FD_EPS) -> Tensor:
    """J v for a block of tangents v (B, *x_shape) at the single point x (*x_shape).

    ``exact`` uses forward-mode AD, vectorised over the tangents with ``vmap`` so the primal
    pass runs once for the whole block (a third cheaper than repeating x in a batch); ``fd``
    is a central difference of step ``fd_eps`` (in L2 units of v) that runs with the model's
    fastest kernels (accuracy: see BENCHMARKS.md and method.md; the one-sided difference, half
    the passes, was measured 20x less accurate on the built-in model and is not offered).
    """
    if mode == "exact":
        with torch.no_grad():  # forward-mode AD ignores grad mode; this keeps parameters out of it
            try:
                single = _single(h_fn)
                return torch.func.vmap(lambda t: torch.func.jvp(single, (x,), (t,))[1])(v.contiguous())
            except (RuntimeError, NotImplementedError):  # an op without a batching rule: repeat x instead
                pass
    return jvp_at(h_fn, x.expand(v.shape[0], *x.shape), v, mode, fd_eps)


def jvp_at(h_fn: HFn, points: Tensor, v: Tensor, mode: JvpMode = "exact", fd_eps: float = DEFAULT_FD_EPS) -> Tensor:
    """J(points[b]) v[b] for tangents v (B, *x_shape) each at its own point (B, *x_shape).

    One batched pass serves tangents at many points (:func:`~backend.lockstep.local_bases` solves several
    bases at once this way); ``mode`` and ``fd_eps`` as in :func:`jvp`.
    """
    if mode == "exact":
        with torch.no_grad():
            return torch.func.jvp(h_fn, (points.contiguous(),), (v.contiguous(),))[1]
    if mode == "fd":
        with torch.no_grad():
            both = h_fn(torch.cat([points + fd_eps * v, points - fd_eps * v]))
        plus, minus = both.chunk(2)
        return (plus - minus) / (2 * fd_eps)
    raise ValueError(f"jvp mode must be 'exact' or 'fd', got {mode!r}")


def vjp(h_fn: HFn, x: Tensor, u: Tensor, vectorize: bool = False) -> Tensor:
    """J^T u for a block of cotangents u (B, *h_shape) at x.

    ``vectorize``: one forward pass and the reverse pass vmapped over the block (cheaper, but
    on the math attention kernel only: vmapping a fused attention backward falls back to a
    loop). Otherwise x is repeated in a batch and one reverse pass serves the block, with
    whatever kernels are active (the memory-lean choice for large models on a GPU).
    """
    if vectorize:
        try:
            with torch.enable_grad():
                _, pullback = torch.func.vjp(_single(h_fn), x.detach())
                return torch.func.vmap(pullback)(u.contiguous())[0]
        except (RuntimeError, NotImplementedError):
            pass  # an op without a batching rule: fall through to the batched reverse pass
    return vjp_at(h_fn, x.expand(u.shape[0], *x.shape), u)


def vjp_at(h_fn: HFn, points: Tensor, u: Tensor) -> Tensor:
    """J(points[b])^T u[b] for cotangents u (B, *h_shape) each at its own point (B, *x_shape):
    one reverse pass through a batch of the points."""
    batch = points.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        h = h_fn(batch)
        (grad,) = torch.autograd.grad(h, batch, grad_outputs=u.to(h.dtype))
    return grad


def _chunked(fn: Callable[..., Tensor], chunk_size: int | None, *blocks: Tensor) -> Tensor:
    """Apply ``fn`` to equal-length ``blocks`` (B, ...) in chunks of rows, to bound peak memory."""
    if chunk_size is None or chunk_size >= blocks[0].shape[0]:
        return fn(*blocks)
    return torch.cat([fn(*parts) for parts in zip(*(block.split(chunk_size) for block in blocks))])


def _orthonormal_columns(mat: Tensor) -> Tensor:
    return torch.linalg.qr(mat, mode="reduced").Q


def _new_directions(space: Tensor, block: Tensor) -> Tensor:
    """Orthonormal columns for what ``block`` adds to the orthonormal ``space``, (n, <= b).

    Columns that add (numerically) nothing are dropped rather than normalised: once the
    space nears an invariant subspace of J^T J (k close to the rank of J, or a tiny model)
    their residual is round-off, and normalising round-off yields directions inside the
    space, which breaks its orthogonality and inflates every later Ritz value.
    """
    scale = block.norm(dim=0)
    for _ in range(2):  # classical Gram-Schmidt twice is enough (Giraud et al. 2005)
        block = block - space @ (space.T @ block)
    q, r = torch.linalg.qr(block, mode="reduced")
    keep = r.diagonal().abs() > math.sqrt(torch.finfo(block.dtype).eps) * scale.clamp_min(torch.finfo(block.dtype).tiny)
    q = q[:, keep]
    return _orthonormal_columns(q - space @ (space.T @ q))  # kept columns are well outside: one pass restores orthogonality


def max_principal_angle(a: Tensor, b: Tensor) -> float:
    """Largest principal angle (rad) between the spans of orthonormal column blocks a and b.

    Taken from the sine, ||b - a a^T b||_2, which stays accurate for tiny angles where
    arccos of the cosine cannot resolve anything below about 5e-4 rad in float32.
    """
    residual = b - a @ (a.T @ b)
    return float(torch.arcsin(torch.linalg.matrix_norm(residual, ord=2).clamp(max=1.0)))


#: Rounds of :func:`local_basis` at most, unless its caller says otherwise (the budget prices a
#: basis at this many: ``backend.budget``).
MAX_ITERS = 30


def default_block_size(k: int, device: torch.device) -> int:
    """Columns per round of :func:`local_basis`.

    On a CPU a round costs in proportion to its columns, and the growing Krylov space already
    gives the accuracy that oversampling buys, so a block of k (at least 8: narrower blocks
    converge too slowly per round) does the least work (built-in model, k = 8: 8 rounds of 8
    in 1.9 s against 7 rounds of 12 in 2.5 s, both within 1e-2 rad of the reference;
    BENCHMARKS.md). A GPU runs a wider block at little extra cost per round, so there k/4
    extra columns (at least 4) buy fewer rounds.
    """
    return max(k, 8) if device.type == "cpu" else k + max(4, k // 4)


#: What :func:`krylov` asks for: ("jvp", tangents (b, *x_shape)) or ("vjp", cotangents (b, *h_shape)).
Product = tuple[str, Tensor]
Solver = Generator[Product, Tensor, Basis]

Request, Answer, Result = TypeVar("Request"), TypeVar("Answer"), TypeVar("Result")


@dataclass(frozen=True)
class Products:
    """How J and J^T products are taken: one configuration for every point it serves."""

    h_fn: HFn
    jvp_mode: JvpMode = "exact"
    fd_eps: float = DEFAULT_FD_EPS
    vjp_dtype: torch.dtype | None = None
    vectorize_vjp: bool | None = None
    chunk_size: int | None = None

    def at(self, x: Tensor, request: Product) -> Tensor:
        """Answer one :func:`krylov` request at the single point x."""
        kind, rows = request
        if kind == "jvp":
            return _chunked(lambda r: jvp(self.h_fn, x, r, self.jvp_mode, self.fd_eps), self.chunk_size, rows)
        vectorize = self._vectorized(x)
        with torch.autocast(x.device.type, dtype=self.vjp_dtype, enabled=self.vjp_dtype is not None):
            return _chunked(lambda r: vjp(self.h_fn, x, r, vectorize=vectorize).to(x.dtype), self.chunk_size, rows)

    def _vectorized(self, x: Tensor) -> bool:
        return (self.jvp_mode == "exact" or x.device.type == "cpu") if self.vectorize_vjp is None else self.vectorize_vjp

    def at_many(self, kind: str, points: Sequence[Tensor], rows: Sequence[Tensor]) -> list[Tensor]:
        """Answer requests of one kind at several points with one batched pass (in chunks).

        J^T products where :meth:`at` would vectorise them (see :func:`vjp`) stay one point at
        a time: one forward pass per point and a vmapped reverse pass beats a batch of
        repeated points by about a quarter on a CPU, which batching does not win back.
        """
        if kind == "vjp" and self._vectorized(points[0]):
            return [self.at(x, (kind, r)) for x, r in zip(points, rows)]
        at = torch.cat([x.expand(r.shape[0], *x.shape) for x, r in zip(points, rows)])
        block = torch.cat(list(rows))
        if kind == "jvp":
            out = _chunked(lambda p, r: jvp_at(self.h_fn, p, r, self.jvp_mode, self.fd_eps), self.chunk_size, at, block)
        else:
            with torch.autocast(at.device.type, dtype=self.vjp_dtype, enabled=self.vjp_dtype is not None):
                out = _chunked(lambda p, r: vjp_at(self.h_fn, p, r).to(at.dtype), self.chunk_size, at, block)
        return list(out.split([r.shape[0] for r in rows]))


def advance(coroutine: Generator[Request, Answer, Result], answer: Answer | None) -> tuple[Request | None, Result | None]:
    """Advance a coroutine solver by one answer (None: start it): its next request, or its result.

    The Krylov iteration (:func:`krylov`) and the geodesic steps (``geometry.shot``) are written as
    coroutines that ask for the work they need, so one driver can answer many at once
    (``backend/lockstep.py``).
    """
    try:
        return (next(coroutine) if answer is None else coroutine.send(answer)), None
    except StopIteration as stop:
        return None, stop.value


def krylov(
    x: Tensor,
    k: int,
    *,
    block_size: int | None = None,
    max_iters: int = 30,
    tol: float = DEFAULT_TOL,
    max_krylov: int | None = None,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[BasisProgress], None] | None = None,
) -> Solver:
    """:func:`local_basis`'s iteration as a coroutine that asks for the products it needs.

    It yields ``("jvp", tangents (b, *x_shape))`` and ``("vjp", cotangents (b, *h_shape))``
    and is sent back J tangents / J^T cotangents at x; it returns the :class:`Basis`. Why:
    the maths stays in one place while the caller decides how products are taken, so
    :func:`~backend.lockstep.local_bases` can answer the requests of many points with one batched U-Net pass.
    Arguments as in :func:`local_basis`.
    """
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
    n = x.numel()
    if k > n:
        raise ValueError(f"k = {k} directions asked, but x has only {n} elements")
    block = min(default_block_size(k, x.device) if block_size is None else block_size, n)
    max_cols = min(n, max(block * 8, k + block) if max_krylov is None else max_krylov)
    x = x.detach()

    start = torch.randn(n, block, generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
    if init is not None:
        warm = init.reshape(init.shape[0], n)[:block].T.to(start)
        start[:, : warm.shape[1]] = warm
    q_new = _orthonormal_columns(start)  # (n, block)

    qs: list[Tensor] = []  # orthonormal Krylov blocks (n, b)
    ys: list[Tensor] = []  # their images J Q (m, b)
    previous_sigma: Tensor | None = None
    previous_v: Tensor | None = None
    converged = False
    for iteration in range(1, max_iters + 1):
        jq = yield "jvp", q_new.T.contiguous().reshape(-1, *x.shape)  # (b, *h_shape)
        h_shape = jq.shape[1:]
        if k > h_shape.numel():
            raise ValueError(f"k = {k} directions asked, but the bottleneck h has only {h_shape.numel()} elements, so J has at most that many")
        qs.append(q_new)
        ys.append(jq.reshape(q_new.shape[1], -1).T)
        q_all, y_all = torch.cat(qs, dim=1), torch.cat(ys, dim=1)
        # Rayleigh-Ritz on the Krylov space: J Q = U S W^T, Ritz vectors Q W, J (Q W) = U S.
        u_s, sigma, w_t = torch.linalg.svd(y_all, full_matrices=False)
        ritz = q_all @ w_t[:k].T  # (n, k)
        top = sigma[:k]
        change = float("inf") if previous_sigma is None else float(((top - previous_sigma).abs() / top.clamp_min(1e-30)).max())
        angle = math.pi / 2 if previous_v is None else max_principal_angle(previous_v, ritz)
        previous_sigma, previous_v = top, ritz
        if callback is not None:
            callback(BasisProgress(iteration, max_iters, top.detach().cpu(), angle))
        converged = change < tol or q_all.shape[1] >= n  # a space that spans everything is exact
        if converged or iteration == max_iters:
            break
        # Next block: J^T applied to the newest images, orthogonalised against the space so far.
        jt_y = (yield "vjp", ys[-1].T.contiguous().reshape(-1, *h_shape)).reshape(q_new.shape[1], -1).T
        if q_all.shape[1] + block > max_cols:
            # Restart: keep the best Ritz vectors (and their images) as the new space.
            keep = min(block, q_all.shape[1])
            qs, ys = [q_all @ w_t[:keep].T], [u_s[:, :keep] * sigma[:keep]]
            q_all = qs[0]
        q_new = _new_directions(q_all, jt_y)[:, : n - q_all.shape[1]]
        if q_new.shape[1] == 0:  # the space is invariant under J^T J: its Ritz pairs are exact
            converged = True
            break

    v = ritz.T.reshape(k, *x.shape)
    u = u_s[:, :k].T.reshape(k, *h_shape)
    # Fix each direction's sign so that equal inputs give equal bases (SVD signs are arbitrary):
    # the largest-magnitude component of every v_i is positive.
    flat = v.reshape(k, -1)
    signs = torch.sign(flat.gather(1, flat.abs().argmax(dim=1, keepdim=True))).reshape(k)
    signs[signs == 0] = 1
    shape_v, shape_u = (k,) + (1,) * (v.ndim - 1), (k,) + (1,) * (u.ndim - 1)
    return Basis(top.detach(), (v * signs.reshape(shape_v)).detach(), (u * signs.reshape(shape_u)).detach(), iteration, converged)


def local_basis(
    h_fn: HFn,
    x: Tensor,
    k: int,
    *,
    block_size: int | None = None,
    max_iters: int = MAX_ITERS,
    tol: float = DEFAULT_TOL,
    max_krylov: int | None = None,
    init: Tensor | None = None,
    chunk_size: int | None = None,
    jvp_mode: JvpMode = "exact",
    fd_eps: float = DEFAULT_FD_EPS,
    vjp_dtype: torch.dtype | None = None,
    vectorize_vjp: bool | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[BasisProgress], None] | None = None,
) -> Basis:
    """Top-k right singular vectors of J = dh/dx at x, by randomised block Krylov iteration.

    Each round applies J to one new orthonormal block Q_j (batched JVP) and J^T to the result
    (batched VJP), giving the next block of the Krylov space span{Q, J^T J Q, (J^T J)^2 Q, ...};
    Rayleigh-Ritz over the whole space so far (the SVD of J [Q_1 .. Q_j], whose columns are
    already known) gives the Ritz triplets. On the flat spectra of U-Net Jacobians this needs
    far fewer passes than plain subspace iteration (Musco & Musco 2015), and a warm start
    (``init``) from a neighbouring basis converges in one or two rounds.

    Args:
        h_fn: batched map (B, *x_shape) -> (B, *h_shape), elements independent.
        x: the point (*x_shape), float32 recommended (the JVPs inherit its dtype).
        k: number of directions, 1..64.
        block_size: columns per round (default :func:`default_block_size`).
        max_iters: cap on rounds (each round = one JVP block; all but the last add a VJP block).
        tol: stop once every top-k Ritz value changes by less than ``tol`` (relative) in a round.
            Singular values converge twice as fast as vectors, so 3e-4 bounds angles near 2e-2
            for well separated directions; measured on the built-in model (k = 8, 0.3 T) they are
            2e-3 rad at 3e-4 as at 1e-4, one round sooner (BENCHMARKS.md).
        max_krylov: cap on the Krylov space's columns (memory: it stores them in x- and h-space);
            past it the space restarts from the current Ritz vectors. Default 8 blocks.
        init: (m, *x_shape) starting directions (a warm start, e.g. a neighbouring basis),
            filled up with random columns to the block size.
        chunk_size: most directions per batched JVP / VJP call (memory bound).
        jvp_mode: ``exact`` (forward AD) or ``fd`` (central difference, fast kernels).
        fd_eps: finite-difference step, in L2 units of the unit tangent.
        vjp_dtype: run the J^T products under autocast at this dtype (e.g. bfloat16 on a GPU).
            They only choose the next search block; the Ritz pairs come from the J Q images,
            which stay in x's dtype. So half precision here costs a little convergence speed,
            never accuracy, and the reverse pass is the most expensive product.
        vectorize_vjp: one forward pass and a vmapped reverse pass per block (see :func:`vjp`)
            instead of a batch of repeated x. Default: with exact JVPs, and on the CPU, where
            it measured 20-40 % faster per round even where vmap loops over a fused attention
            backward (BENCHMARKS.md); on a GPU that loop makes the batched pass the faster.
        generator: seeds the random start, so equal inputs give equal bases.
        callback: receives a :class:`BasisProgress` after each round.
    """
    x = x.detach()
    products = Products(h_fn, jvp_mode, fd_eps, vjp_dtype, vectorize_vjp, chunk_size)
    solver = krylov(x, k, block_size=block_size, max_iters=max_iters, tol=tol, max_krylov=max_krylov, init=init, generator=generator, callback=callback)
    request, basis = advance(solver, None)
    while basis is None:
        request, basis = advance(solver, products.at(x, request))
    return basis
