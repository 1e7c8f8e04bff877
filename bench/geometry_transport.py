"""Geometry evaluation, section (b): does a direction carried from one seed to another by
parallel transport still move the same factor there (bench/geometry_eval.py runs it)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from backend.catpeople import semantics
from backend.catpeople.render import FACTORS
from backend.errors import InputError
from backend.specs import BasisSpec, SampleSpec
from bench.geometry_sizes import Sizes
from bench.common import Report, log, pct, table



def response(service, spec, estimator, strength: float, index: int | None = None, vector: torch.Tensor | None = None) -> torch.Tensor:
    """(F,) mean absolute factor change over edits at +-strength (direct mode)."""
    return semantics.factor_response(service, spec, index, vector, (-strength, strength), estimator=estimator)


@dataclass
class Carried:
    """One source direction applied to one target sample, transported and raw."""

    source: int  # source seed
    target: int  # target seed
    index: int  # direction index in the source basis
    source_response: torch.Tensor  # (F,) what it moves on the source
    label: str  # its slider name on the source (label_directions' rule), or "mixed"
    transported: torch.Tensor | None  # (F,) response on the target; None if transport failed
    raw: torch.Tensor  # (F,) response of the untransported vector on the target

    @property
    def top(self) -> int:
        return int(self.source_response.argmax())

    def response(self, kind: str) -> torch.Tensor | None:
        return self.transported if kind == "transported" else self.raw


def section_transport(service, estimator, sizes: Sizes, report: Report, deadline: float) -> dict:
    start = time.perf_counter()
    strength = sizes.transport_strength
    dirs = range(sizes.transport_dirs)
    magnitudes = semantics.label_magnitudes(strength)

    target_k = sizes.transport_target_k or sizes.k

    def spec_of(seed: int, k: int = sizes.k) -> BasisSpec:
        return BasisSpec(SampleSpec(seed=seed), timestep=sizes.timestep, k=k)

    carried: list[Carried] = []
    overlap, cosine, failures, sources = [], [], [], []
    for src_seed in sizes.transport_sources:
        if sources and time.monotonic() > deadline:
            log(f"transport: budget spent, stopping after sources {sources}")
            break
        source_spec = spec_of(src_seed)
        source = service.discover(source_spec).basis
        # Responses at the label magnitudes (strength / 2, strength): the last row is the one compared on
        # the targets; both name the directions that have a meaning to carry, by the sliders' own rule.
        rows = {i: torch.stack([response(service, source_spec, estimator, m, index=i) for m in magnitudes]) for i in dirs}
        src_resp = {i: r[-1] for i, r in rows.items()}
        src_label = {i: semantics.label_from_response(i, r).label for i, r in rows.items()}
        log(f"transport: seed {src_seed} directions move " + ", ".join(f"v{i} {FACTORS[int(r.argmax())]} ({src_label[i]})" for i, r in src_resp.items()))
        for seed in sizes.transport_targets:
            if seed == src_seed:
                continue
            spec = spec_of(seed, target_k)
            target = service.discover(spec).basis
            for i in dirs:
                u = source.u[i].reshape(-1).double()
                overlap.append(float((target.u.reshape(target.k, -1).double() @ u).norm() / u.norm()))
                raw = source.v[i]
                try:
                    moved = service.transport(source, i, target)
                except InputError as exc:
                    failures.append(f"seed {src_seed} -> {seed} dir {i}: {exc}")
                    moved = None
                if moved is not None:
                    cosine.append(float(torch.nn.functional.cosine_similarity(moved.reshape(1, -1).double(), raw.reshape(1, -1).double())))
                carried.append(Carried(src_seed, seed, i, src_resp[i], src_label[i],
                                       None if moved is None else response(service, spec, estimator, strength, vector=moved),
                                       response(service, spec, estimator, strength, vector=raw)))
            log(f"transport {src_seed} -> {seed}: " + ", ".join(
                f"{kind} {[FACTORS[int(c.response(kind).argmax())] if c.response(kind) is not None else '-' for c in carried if (c.source, c.target) == (src_seed, seed)]}"
                for kind in ("transported", "raw")))
        sources.append(src_seed)
    seconds = time.perf_counter() - start
    kinds = ("transported", "raw")

    def hit(c: Carried, kind: str) -> bool:  # a failed transport counts as a miss
        r = c.response(kind)
        return r is not None and int(r.argmax()) == c.top

    def share(kind: str, among: list[Carried]) -> float:
        return sum(hit(c, kind) for c in among) / len(among) if among else float("nan")

    def rate(kind: str, among: list[Carried]) -> str:
        return f"{pct(share(kind, among))} ({sum(hit(c, kind) for c in among)}/{len(among)})"

    def others(c: Carried) -> list[Carried]:  # the other directions carried between the same two samples
        return [o for o in carried if (o.source, o.target) == (c.source, c.target) and o.index != c.index]

    def cross(kind: str) -> float:  # chance-like baseline: a target response vs another direction's source top factor
        xs = [int(c.response(kind).argmax()) == o.top for c in carried if c.response(kind) is not None for o in others(c)]
        return float(np.mean(xs)) if xs else float("nan")

    def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(np.corrcoef(a.double().numpy(), b.double().numpy())[0, 1])

    def profile(kind: str, matched: bool) -> float:  # graded: Pearson correlation of the factor-response profiles
        xs = [correlation(c.response(kind), o.source_response) for c in carried if c.response(kind) is not None
              for o in ([c] if matched else others(c))]
        return float(np.mean(xs)) if xs else float("nan")

    named = [c for c in carried if c.label != semantics.MIXED]
    lines = ["## (b) Transport of directions between seeds", ""]
    lines.append(
        f"Sources: seeds {sources} (asked: {list(sizes.transport_sources)}), timestep {sizes.timestep:g}, k={sizes.k}; targets (k={target_k}): "
        f"seeds {list(sizes.transport_targets)} other than the source. Each of a source's top-{sizes.transport_dirs} directions "
        "v_i is carried to each target by `service.transport(source.basis, i, target.basis)` and applied there with "
        f"`edit_vector` (direct mode) at +-{strength:g}; the factor response is the mean absolute change of the estimated "
        "factors over the two signs (sign-free, so the arbitrary sign of a singular vector does not matter). A *hit* is a "
        "target edit whose most-moved factor equals the one v_i moves most on its source. *raw* applies the source's v_i "
        "unchanged. *Named*: only the directions that have a meaning to carry, those `label_directions` names on the source "
        f"(one factor moves >= 2x any other at each of {' and '.join(f'+-{m:g}' for m in magnitudes)}); the others move a mix, "
        "whose top factor is a weak target."
    )
    lines.append("")
    rows = []
    for src_seed in sources:
        mine = [c for c in carried if c.source == src_seed]
        names = sorted({f"v{c.index} {c.label}" for c in mine if c.label != semantics.MIXED})
        mine_named = [c for c in mine if c.label != semantics.MIXED]
        rows.append([str(src_seed), ", ".join(names) or "none"] + [rate(kind, mine) for kind in kinds] + [rate(kind, mine_named) for kind in kinds])
    rows.append(["all", f"{len({(c.source, c.index) for c in named})} named"] + [f"**{rate(kind, carried)}**" for kind in kinds]
                + [f"**{rate(kind, named)}**" for kind in kinds])
    lines += table(["source seed", "named directions", "transported: hits", "raw v_i: hits", "named, transported", "named, raw"], rows)
    per_factor = []
    for name in sorted({c.label for c in named}):
        group = [c for c in named if c.label == name]
        per_factor.append([name, str(len({(c.source, c.index) for c in group}))] + [rate(kind, group) for kind in kinds])
    if per_factor:
        lines += table(["named factor", "source directions", "transported: hits", "raw v_i: hits"], per_factor)

    def carried_to_most(kind: str) -> int:  # named source directions that hit on more than half of their targets
        by_direction: dict[tuple[int, int], list[bool]] = {}
        for c in named:
            by_direction.setdefault((c.source, c.index), []).append(hit(c, kind))
        return sum(sum(h) > len(h) / 2 for h in by_direction.values())

    if named:
        n_named = len({(c.source, c.index) for c in named})
        lines.append(f"Named directions that move their factor on most of their targets: transported {carried_to_most('transported')} "
                     f"of {n_named}, raw {carried_to_most('raw')} of {n_named}.")
        lines.append("")
    lines.append(
        f"Baseline (a target's top factor vs *another* direction's source top factor): transported {pct(cross('transported'))}, "
        f"raw {pct(cross('raw'))}; uniform chance over {len(FACTORS)} factors is {pct(1 / len(FACTORS))}."
    )
    lines.append("")
    lines.append(
        "Graded: the Pearson correlation, over the factors, between the target's response and the source direction's "
        "response (1 = the same mix of factors moves in the same proportions; the hit rate only compares the top factor, "
        "which is fragile when directions move several factors). Mean over the pairs; the baseline pairs a target "
        "response with *another* source direction's response."
    )
    lines.append("")
    lines += table(["", "same direction", "baseline (other direction)"],
                   [[kind, f"**{profile(kind, True):+.3f}**", f"{profile(kind, False):+.3f}"] for kind in kinds])
    if cosine:
        lines.append(
            f"|U_target^T u_i| / |u_i| (how much of the source direction's h-image lies in the target's top-{target_k} h-space): "
            f"mean {np.mean(overlap):.3f}, min {np.min(overlap):.3f}. Cosine(transported, raw v_i): mean {np.mean(cosine):+.3f}, "
            f"mean |cos| {np.mean(np.abs(cosine)):.3f}."
        )
        lines.append("")
    if failures:
        lines.append(f"Transport failures (InputError, {len(failures)}): " + "; ".join(failures[:5]))
        lines.append("")
    lines.append(f"Section time {seconds:.0f} s.")
    lines.append("")
    report.sections["transport"] = lines

    return {"seconds": seconds, "sources": sources, "transported": share("transported", carried), "raw": share("raw", carried),
            "named": {kind: share(kind, named) for kind in kinds},
            "profile": {kind: profile(kind, True) for kind in kinds}, "profile_baseline": {kind: profile(kind, False) for kind in kinds}}
