"""The ``eigenface`` subcommands that train the built-in cat-people models.

They plug into the CLI through :func:`register`, so the general commands in
:mod:`backend.cli` know nothing of cat people.
"""

from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> None:
    from .train import TrainConfig, train

    config = TrainConfig(
        out=args.out,
        resolution=args.resolution,
        minutes=args.minutes,
        batch_size=args.batch_size,
        device=args.device,
        weights_dtype=args.weights_dtype,
        seed=args.seed,
        init=args.init,
        compile=args.compile,
        snr_gamma=args.snr_gamma,
    )
    print(f"saved {train(config)}")


def _train_text(args: argparse.Namespace) -> None:
    from .train_text import TextTrainConfig, train_text

    config = TextTrainConfig(
        out=args.out,
        minutes=args.minutes,
        vae_minutes=args.vae_minutes,
        pool=args.pool,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    print(f"saved {train_text(config)}")


def _train_estimator(args: argparse.Namespace) -> None:
    from .estimator import train_estimator

    estimator = train_estimator(args.resolution, args.minutes, args.batch_size, args.device, args.seed, init=args.init, lr=args.lr)
    estimator.save(args.out)
    print(f"saved {args.out} (face threshold {estimator.face_threshold:.5f})")


# ------------------------------------------------------------------------------ parser
def _training_args(p: argparse.ArgumentParser, minutes: float, batch_size: int) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--minutes", type=float, default=minutes, help="wall-clock budget")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, ...")
    p.add_argument("--seed", type=int, default=0)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training subcommands to the ``eigenface`` parser's subcommands."""
    p = sub.add_parser("train", help="train a cat-people diffusion model (diffusers layout, resumable)")
    _training_args(p, minutes=10.0, batch_size=128)
    p.add_argument("--weights-dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--init", default=None, help="start from this pipeline's U-Net weights (fine-tuning)")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (worth it on a GPU for runs over a few minutes)")
    p.add_argument("--snr-gamma", type=float, default=None, help="Min-SNR-gamma loss weighting (e.g. 5; default: plain epsilon MSE)")
    p.set_defaults(func=_train)

    p = sub.add_parser("train-text", help="train the cat-people text-to-image model (Stable Diffusion layout, resumable)")
    p.add_argument("--out", required=True, help="output directory; run again with the same --out to resume")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget of the whole run, resumes included")
    p.add_argument("--vae-minutes", type=float, default=12.0, help="of the budget, the autoencoder's share")
    p.add_argument("--pool", type=int, default=40_000, help="renders drawn once and shared by both stages")
    p.add_argument("--batch-size", type=int, default=64, help="denoiser batch size")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, ...")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_text)

    p = sub.add_parser("train-estimator", help="train the cat-people factor estimator")
    _training_args(p, minutes=2.0, batch_size=256)
    p.add_argument("--init", default=None, help="an estimator directory to fine-tune (default: start afresh)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine over the time budget); lower it to fine-tune")
    p.set_defaults(func=_train_estimator)
