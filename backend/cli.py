"""The ``eigenface`` command line: every subcommand is one call into the service.

Bad input prints one line on stderr and exits with status 2 before anything is written.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
from pathlib import Path

from .catpeople import commands as catpeople_commands
from .errors import EigenfaceError, InputError
from .notation import parse_directions
from .sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS

EXIT_BAD_INPUT = 2
#: --boost: quality boosting (ServiceConfig.boost): auto = pixel models only.
BOOST_CHOICES = {"auto": None, "on": True, "off": False}


# ------------------------------------------------------------------------------ shared pieces
def _models() -> dict[str, str]:
    """The CLI's named models: the built-in ones (any other path or hub id is allowed too)."""
    from .registry import builtin_models

    return builtin_models()


def _service(args: argparse.Namespace):
    from .catpeople.semantics import labellers_for
    from .service import EigenfaceService, ServiceConfig

    library = {"library_dir": args.library} if getattr(args, "library", None) else {}  # else $EIGENFACE_LIBRARY or the default
    models = _models()
    boost = BOOST_CHOICES[getattr(args, "boost", "auto")]
    return EigenfaceService(
        ServiceConfig(models=models, allow_any_model=True, device=getattr(args, "device", None), labellers=labellers_for(models), boost=boost, **library)
    )


def _sample(args: argparse.Namespace, seed: int | None = None, prompt: str | None = None):
    from .registry import canonical_model_name
    from .specs import BUILTIN_NAME, SampleSpec

    return SampleSpec(
        model=canonical_model_name(args.model or BUILTIN_NAME, _models()),
        seed=args.seed if seed is None else seed,
        prompt=args.prompt if prompt is None else prompt,
        steps=args.steps,
        guidance_scale=args.guidance,
    )


def _basis_spec(args: argparse.Namespace, **overrides):
    from .specs import BasisSpec

    sample = _sample(args, overrides.pop("seed", None), overrides.pop("prompt", None))
    # getattr: `compare` has no --timestep (it passes one per spec), and pop's default is evaluated eagerly
    return BasisSpec(sample, overrides.pop("timestep", getattr(args, "timestep", None)), overrides.pop("k", getattr(args, "k", 8)), getattr(args, "edit_prompt", None) or None)


def _check_out(path: str, suffixes: tuple[str, ...]) -> Path:
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise InputError(f"--out must end in {' or '.join(suffixes)}, got {path!r}")
    return out


def _timestep(value: str) -> str:
    return value  # parsed (int = training timestep, float = fraction of T) by the service


# ------------------------------------------------------------------------------ commands
def _generate(args: argparse.Namespace) -> None:
    out = _check_out(args.out, (".png",))
    image = _service(args).generate(_sample(args))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"wrote {out}")


def _discover(args: argparse.Namespace) -> None:
    from .ranges import Calibration
    from .store import save_basis

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {args.out!r} exists and is not a directory")
    service, spec = _service(args), _basis_spec(args)
    result = service.discover(spec)
    grid = service.grid(spec, args.grid_strength, args.grid_columns)
    meta = {
        "model": spec.sample.model,
        "prompt": spec.sample.prompt,
        "edit_prompt": spec.edit_prompt or "",
        "seed": spec.sample.seed,
        "steps": spec.sample.steps,
        "guidance_scale": service.guidance(service.model(spec.sample.model), spec.sample),
        "timestep": result.timestep,
        "k": result.basis.k,
        "iterations": result.basis.iterations,
        "converged": result.basis.converged,
        "seconds": round(result.seconds, 4),
        "sigma": [round(float(s), 6) for s in result.basis.sigma],
    }
    save_basis(out, result.basis, result.x_t, meta, Calibration(result.ranges, result.travel))
    grid.save(out / "grid.png")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {out}/basis.safetensors, meta.json, grid.png ({result.basis.k} directions, {result.seconds:.2f} s, {result.basis.iterations} rounds)")


def _edit(args: argparse.Namespace) -> None:
    from .edit import combine
    from .specs import check_strength
    from .store import load_basis, load_calibration, load_direction

    out = _check_out(args.out, (".png",))
    if [args.basis, args.vector, args.saved].count(None) != 2:
        raise InputError("give either --basis with --direction I=S, --vector with --strength, or --saved NAME")
    if args.saved is None and (args.saved_strength is not None or args.transport):
        raise InputError("--saved-strength and --transport go with --saved NAME")
    service = _service(args)
    if args.basis is not None:
        if not args.direction:
            raise InputError("--basis needs at least one --direction INDEX=STRENGTH")
        basis, x_t, meta = load_basis(args.basis)
        # Without --timestep, the point the basis file says it was computed at (not the model's default).
        timestep = args.timestep if args.timestep is not None else meta.get("timestep")
        spec = _basis_spec(args, k=basis.k, timestep=timestep)
        if not service.adopt_basis(spec, basis, x_t, load_calibration(args.basis, basis.k)):
            raise InputError(
                f"{args.basis} was computed at another point (see its meta.json: seed, timestep, prompt, steps); "
                "pass the same settings, or apply a direction elsewhere with transport and --vector"
            )
        # a file written before ranges existed is calibrated here (discover finds its basis adopted)
        values = parse_directions(args.direction, lambda: service.discover(spec).travel)
        import torch

        sliders = torch.zeros(basis.k)
        for index, value in values.items():
            if not 0 <= index < basis.k:
                raise InputError(f"direction index {index} is out of range: the basis has {basis.k} directions (0..{basis.k - 1})")
            sliders[index] = check_strength(value, f"strength of direction {index}")
        direction, strength = combine(basis.v, sliders)
        if strength == 0.0:
            image = service.edit_vector(spec, basis.v[0], 0.0, args.mode, substeps=args.substeps)
        else:
            image = service.edit_vector(spec, direction, strength, args.mode, substeps=args.substeps)
    elif args.vector is not None:
        if args.strength is None:
            raise InputError("--vector needs --strength")
        vector, _ = load_direction(args.vector)
        image = service.edit_vector(_basis_spec(args), vector, check_strength(args.strength), args.mode, substeps=args.substeps)
    else:
        strength = _saved_strength(service, args.saved) if args.saved_strength is None else args.saved_strength
        image = service.library.edit(_basis_spec(args), args.saved, strength, mode=args.mode, transport=args.transport, substeps=args.substeps)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    print(f"wrote {out}")


def _saved_strength(service, name: str) -> float:
    """edit --saved's default strength: the one the direction was saved with (1 for one basis direction)."""
    provenance = next((saved.provenance for saved in service.library.list() if saved.name == name), {})
    return provenance.get("strength", 1.0)  # an unknown name: edit_saved says so


def _list_directions(args: argparse.Namespace) -> None:
    service = _service(args)
    saved = service.library.list()
    if not saved:
        print(f"no saved directions in {service.library.files.root}")
    for direction in saved:
        p = direction.provenance
        if "index" in p:
            made = f"direction {p['index']} of {p.get('k', '?')}"
        elif "sliders" in p:
            made = f"sliders {' '.join(f'{i}={s}' for i, s in p['sliders'].items())} (strength {p.get('strength', '?')})"
        else:
            made = "origin not recorded"
        print(f"{direction.name}: {made}; model {p.get('model', '?')}, seed {p.get('seed', '?')}, timestep {p.get('timestep', '?')}, prompt {p.get('prompt', '')!r}")


def _save_direction(args: argparse.Namespace) -> None:
    items = args.direction
    service, spec = _service(args), _basis_spec(args)
    if len(items) == 1 and "=" not in items[0]:
        try:
            made_of = {"index": int(items[0])}
        except ValueError:
            raise InputError(f"--direction takes INDEX or INDEX=STRENGTH, got {items[0]!r}") from None
    elif items:
        made_of = {"strengths": parse_directions(items, lambda: service.discover(spec).travel)}
    else:
        raise InputError("give --direction I (one basis direction) or --direction I=S pairs (a slider edit)")
    saved = service.library.save(args.name, spec, overwrite=args.overwrite, **made_of)
    print(f"saved {saved.name!r} to {saved.path}")


def _delete_direction(args: argparse.Namespace) -> None:
    print(f"deleted {args.name!r} ({_service(args).library.delete(args.name)})")


def _transport(args: argparse.Namespace) -> None:
    from .store import load_basis, save_direction

    out = _check_out(args.out, (".safetensors",))
    source, _, meta_a = load_basis(getattr(args, "from"))
    target, _, meta_b = load_basis(args.to)
    v = _service(args).transport(source, args.direction, target)
    provenance = {"transported_from": {**{k: meta_a.get(k) for k in ("model", "prompt", "seed", "timestep")}, "index": args.direction},
                  "transported_to": {k: meta_b.get(k) for k in ("model", "prompt", "seed", "timestep")}}
    save_direction(out, v, provenance)
    print(f"wrote {out}")


def _compare(args: argparse.Namespace) -> None:
    import numpy as np

    from .plots import heatmap

    out = Path(args.out)
    prompts = args.prompts if args.prompts else [args.prompt]
    specs, labels = [], []
    for prompt, timestep, seed in itertools.product(prompts, args.timesteps, args.seeds):
        specs.append(_basis_spec(args, seed=seed, prompt=prompt, timestep=timestep))
        labels.append(" ".join(p for p in (f"'{prompt[:16]}'" if prompt else "", f"t={timestep}", f"seed={seed}") if p))
    dist = _service(args).compare(specs, args.space)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "distances.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", *labels])
        for label, row in zip(labels, dist):
            writer.writerow([label, *(f"{d:.6f}" for d in row)])
    k_max = np.pi / 2 * np.sqrt(args.k)
    heatmap(dist, labels, f"Grassmann distance of top-{args.k} bases ({args.space}-space; max {k_max:.2f})").save(out / "heatmap.png")
    print(f"wrote {out}/distances.csv, heatmap.png")


def _find(args: argparse.Namespace) -> None:
    from .store import save_direction

    out = _check_out(args.out, (".safetensors",))
    spec = _basis_spec(args)
    alignment, result = _service(args).find_concept(spec, args.concept, args.space)
    provenance = {"concept": args.concept, "model": spec.sample.model, "prompt": spec.sample.prompt, "seed": spec.sample.seed,
                  "timestep": result.timestep, "k": result.basis.k, "space": args.space, "captured": round(alignment.captured, 4)}
    save_direction(out, alignment.direction, provenance)
    print(f"directions by alignment with {args.concept!r} (positive = toward):")
    for index in alignment.order.tolist():
        print(f"  {index:3d}  score {float(alignment.scores[index]):+.4f}  sigma {float(result.basis.sigma[index]):.3f}")
    print(f"wrote {out} (the concept's projection onto the top-{result.basis.k} span keeps {alignment.captured:.1%} of it)")


# ------------------------------------------------------------------------------ parser
def _sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="diffusers pipeline directory or hub id (default: the built-in cat-people model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"DDIM steps (default {DEFAULT_STEPS}, as in the app)")
    p.add_argument("--prompt", default="", help="text prompt (Stable Diffusion models only)")
    p.add_argument("--guidance", type=float, default=None, help=f"classifier-free guidance scale (default: the model's eigenface.json, else {DEFAULT_GUIDANCE})")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    p.add_argument("--boost", choices=list(BOOST_CHOICES), default="auto",
                   help="quality boosting: stochastic steps with fixed noise for t <= 0.2 T (auto: on for pixel models, off for latent models like SD)")


def _basis_args(p: argparse.ArgumentParser, edit_prompt: bool = True) -> None:
    from .specs import DEFAULT_K, DEFAULT_TIMESTEP

    p.add_argument("--timestep", type=_timestep, default=None,
                   help=f"training timestep (integer) or fraction of T (e.g. 0.6; default: the model's eigenface.json, else {DEFAULT_TIMESTEP})")
    p.add_argument("--k", type=int, default=DEFAULT_K, help="directions in the local basis")
    if edit_prompt:
        p.add_argument("--edit-prompt", default=None, help="compute the Jacobian under this prompt's conditioning and list the directions by how much they carry the change toward it, each signed toward it (SD)")


def _library_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--library", default=None, metavar="DIR", help="folder of named directions (default: $EIGENFACE_LIBRARY or ~/.cache/eigenface/directions)")


def build_parser() -> argparse.ArgumentParser:
    from .edit import EDIT_MODES
    from .specs import DEFAULT_K

    parser = argparse.ArgumentParser(prog="eigenface", description="Find and steer the semantic directions of a diffusion model's h-space.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="sample one image deterministically (DDIM, eta = 0)")
    _sample_args(p)
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=_generate)

    p = sub.add_parser("discover", help="compute the top-k eigen-directions at one timestep")
    _sample_args(p)
    _basis_args(p)
    p.add_argument("--grid-strength", type=float, default=0.5, help="largest edit strength in grid.png")
    p.add_argument("--grid-columns", type=int, default=5)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_discover)

    p = sub.add_parser("edit", help="edit along saved directions (or any vector) and regenerate")
    _sample_args(p)
    _basis_args(p, edit_prompt=False)  # --k: for --saved --transport and geodesic edits (--basis brings its own)
    p.add_argument("--basis", help="a basis.safetensors written by discover")
    p.add_argument("--direction", action="append", default=[], metavar="I=S",
                   help="direction index and strength (repeatable); I=hi / I=lo: the ends of its calibrated range; "
                        "I=0.5r: slider position 0.5 on that range (-1r .. 1r, evenly spaced in image change, as on the page)")
    p.add_argument("--vector", help="a .safetensors file holding a direction tensor 'v' of the sample shape")
    p.add_argument("--strength", type=float, help="strength for --vector")
    p.add_argument("--saved", metavar="NAME", help="a direction from the library (directions save)")
    p.add_argument("--saved-strength", type=float, help="strength for --saved (default: the strength it was saved with)")
    p.add_argument("--transport", action="store_true", help="carry --saved from the image it was saved at into this image's local basis")
    _library_arg(p)
    p.add_argument("--mode", choices=EDIT_MODES, default="direct")
    p.add_argument("--substeps", type=int, default=None, help="substeps for guidance / geodesic edits")
    p.add_argument("--out", required=True, help="PNG file")
    p.set_defaults(func=_edit)

    p = sub.add_parser("transport", help="carry a direction from one sample's basis to another's")
    p.add_argument("--from", required=True, help="source basis.safetensors")
    p.add_argument("--direction", type=int, required=True, help="index of the source direction")
    p.add_argument("--to", required=True, help="target basis.safetensors (same model and timestep)")
    p.add_argument("--out", required=True, help=".safetensors file for the transported direction (edit --vector reads it)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_transport)

    p = sub.add_parser("compare", help="Grassmann distances between bases over prompts x timesteps x seeds")
    _sample_args(p)
    p.add_argument("--prompts", nargs="*", default=None)
    p.add_argument("--timesteps", nargs="+", type=_timestep, default=["0.8", "0.6", "0.4", "0.2"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--k", type=int, default=DEFAULT_K)
    p.add_argument("--space", choices=["x", "h"], default="x")
    p.add_argument("--out", required=True, help="output directory (distances.csv, heatmap.png)")
    p.set_defaults(func=_compare)

    p = sub.add_parser("find", help="the local direction toward a text concept (text models), combined from the image's top max(--k, 24) directions")
    _sample_args(p)
    p.add_argument("--concept", required=True, help="text naming what to move toward, e.g. 'a horse'")
    _basis_args(p)
    p.add_argument("--space", choices=["x", "h"], default="x", help="measure the concept in x-space (predicted x_0) or h-space")
    p.add_argument("--out", required=True, help=".safetensors file for the combined direction (edit --vector reads it)")
    p.set_defaults(func=_find)

    p = sub.add_parser("directions", help="the library of named directions")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("list", help="one line per saved direction: what it was made of and the image it was found at")
    _library_arg(q)
    q.set_defaults(func=_list_directions)
    q = actions.add_parser("save", help="save one basis direction or a slider edit under a name (edit --saved applies it)")
    q.add_argument("name")
    _sample_args(q)
    _basis_args(q)
    q.add_argument("--direction", action="append", default=[], metavar="I or I=S",
                   help="one basis direction I, or direction index and strength (repeatable; I=hi, I=lo, I=0.5r as in edit)")
    q.add_argument("--overwrite", action="store_true", help="replace a direction of the same name")
    _library_arg(q)
    q.set_defaults(func=_save_direction)
    q = actions.add_parser("delete", help="remove a saved direction from the library")
    q.add_argument("name")
    _library_arg(q)
    q.set_defaults(func=_delete_direction)

    catpeople_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers warns on stderr about optional packages no Eigenface command uses (torchvision
    # image processors, imported with Stable Diffusion pipelines); it reads this before its first log.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EigenfaceError as exc:
        print(f"eigenface: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
