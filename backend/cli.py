"""The ``eigenface`` command line: every subcommand is one call into the backend."""

from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> None:
    from .catpeople.train import TrainConfig, train

    config = TrainConfig(
        out=args.out,
        resolution=args.resolution,
        minutes=args.minutes,
        batch_size=args.batch_size,
        device=args.device,
        weights_dtype=args.weights_dtype,
        seed=args.seed,
    )
    print(f"saved {train(config)}")


def _train_estimator(args: argparse.Namespace) -> None:
    from .catpeople.estimator import train_estimator
    from .catpeople.train import resolve_device

    estimator = train_estimator(args.resolution, args.minutes, args.batch_size, resolve_device(args.device), args.seed)
    estimator.save(args.out)
    print(f"saved {args.out} (face threshold {estimator.face_threshold:.5f})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eigenface", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a cat-people diffusion model (diffusers layout, resumable)")
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--weights-dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train)

    p = sub.add_parser("train-estimator", help="train the cat-people factor estimator")
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_estimator)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
