"""Reading the cat-people factors back from an image.

A small CNN regresses the factors (hue as a point on the circle, so that red near 0 and red
near 1 are neighbours); whether an image *is* a cat face at all is decided by analysis by
synthesis: re-render the face from the estimated factors and compare. A clean face re-renders
almost exactly; noise, smears and half-faces do not. This makes "the edit kept a valid face"
measurable without a second learned model to trust.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import InputError
from .checks import check_budget, resolve_device
from .render import CIRCULAR, FACTORS, NUM_FACTORS, render, sample_factors

_HUE = FACTORS.index("hue")
LOWPASS = 4  # pooling factor of the face check


class FactorRegressor(nn.Module):
    """Conv net: image (B, 3, R, R) in [0, 1] -> (B, NUM_FACTORS + 1) raw outputs (hue as cos, sin)."""

    def __init__(self, resolution: int = 64, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = 3, resolution
        for out in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            channels, size = out, (size + 1) // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 256), nn.SiLU(), nn.Linear(256, NUM_FACTORS + 1))
        self.resolution = resolution
        self.width = width

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images * 2 - 1))


def _targets(factors: Tensor) -> Tensor:
    """Factors -> regression targets: linear factors as they are, hue as (cos, sin)."""
    angle = factors[:, _HUE] * 2 * math.pi
    rest = torch.cat([factors[:, :_HUE], factors[:, _HUE + 1 :]], dim=1)
    return torch.cat([rest, torch.cos(angle)[:, None], torch.sin(angle)[:, None]], dim=1)


def _factors(raw: Tensor) -> Tensor:
    """Inverse of :func:`_targets` on network outputs."""
    rest, cos, sin = raw[:, : NUM_FACTORS - 1].clamp(0, 1), raw[:, -2], raw[:, -1]
    hue = (torch.atan2(sin, cos) / (2 * math.pi)) % 1.0
    return torch.cat([rest[:, :_HUE], hue[:, None], rest[:, _HUE:]], dim=1)


def factor_distance(a: Tensor, b: Tensor) -> Tensor:
    """Per-factor absolute difference (B, F); circular factors take the short way round."""
    d = (a - b).abs()
    for name in CIRCULAR:
        i = FACTORS.index(name)
        d[:, i] = torch.minimum(d[:, i], 1 - d[:, i])
    return d


@dataclass
class FactorEstimator:
    """A trained regressor plus the reconstruction threshold that decides "this is a face"."""

    regressor: FactorRegressor
    face_threshold: float  # max mean squared re-render error of a valid face

    @torch.no_grad()
    def estimate(self, images: Tensor) -> Tensor:
        """Images (B, 3, R, R) in [0, 1] -> factors (B, F) in [0, 1]."""
        images = _resize(images.float(), self.regressor.resolution)
        return _factors(self.regressor.eval()(images))

    @torch.no_grad()
    def reconstruction_error(self, images: Tensor, factors: Tensor | None = None) -> Tensor:
        """Mean squared difference (B,) between each image and the face its factors describe.

        Compared where the face is (the background is a factor of its own, checked by the
        factor statistics, not by "is there a face") and at a quarter of the resolution:
        speckle that a few DDIM steps leave behind averages out, while a missing ear, a
        smeared eye or a second face does not.
        """
        resolution = self.regressor.resolution
        images = _resize(images.float(), resolution)
        factors = self.estimate(images) if factors is None else factors
        diff = nn.functional.avg_pool2d(render(factors, resolution) - images, LOWPASS) ** 2  # (B, 3, r, r)
        inside = (nn.functional.avg_pool2d(face_mask(factors, resolution)[:, None], LOWPASS) > 0.99).float()
        return (diff * inside).sum(dim=(1, 2, 3)) / (3 * inside.sum(dim=(1, 2, 3)).clamp_min(1))

    def calibrate(self, seed: int = 1, n: int = 1024) -> float:
        """Set the face threshold from augmented clean renders: a valid face re-renders within
        three times the error of the 99th-percentile clean render."""
        factors = sample_factors(n, torch.Generator().manual_seed(seed), horse=True)
        clean = render(factors, self.regressor.resolution)
        errors = self.reconstruction_error(_augment(clean, torch.Generator().manual_seed(seed + 1)))
        self.face_threshold = float(torch.quantile(errors, 0.99) * 3)
        return self.face_threshold

    def is_face(self, images: Tensor) -> Tensor:
        """Boolean (B,): the image re-renders from its estimated factors within the threshold."""
        return self.reconstruction_error(images) <= self.face_threshold

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.regressor.state_dict().items()}, directory / "estimator.safetensors")
        config = {"resolution": self.regressor.resolution, "width": self.regressor.width, "face_threshold": self.face_threshold, "factors": list(FACTORS)}
        (directory / "estimator.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, directory: str | Path, grow: bool = False) -> "FactorEstimator":
        """Load a saved estimator. ``grow`` accepts one trained before the renderer gained its
        later factors (its factors are a prefix of :data:`FACTORS`): the new outputs start at
        zero weight, ready to be fine-tuned; it cannot read them until it is."""
        directory = Path(directory)
        config = json.loads((directory / "estimator.json").read_text())
        old = config["factors"]
        if old != list(FACTORS) and not (grow and old == list(FACTORS[: len(old)])):
            raise ValueError(f"{directory} was trained for factors {old}, this renderer has {list(FACTORS)}")
        regressor = FactorRegressor(config["resolution"], config["width"])
        state = load_file(directory / "estimator.safetensors")
        regressor.load_state_dict(_grow_head(state, len(old)) if old != list(FACTORS) else state)
        return cls(regressor.eval(), float(config["face_threshold"]))


def _grow_head(state: dict[str, Tensor], old_factors: int) -> dict[str, Tensor]:
    """Widen the last layer of a regressor trained on the first ``old_factors`` factors.

    Outputs are [linear factors..., cos hue, sin hue]; new linear factors go before the hue
    pair with zero weights and a bias of 0.5 (the middle of their range).
    """
    keys = sorted((k for k in state if k.startswith("head.") and k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
    last = keys[-1].rsplit(".", 1)[0]
    weight, bias = state[f"{last}.weight"], state[f"{last}.bias"]
    extra = NUM_FACTORS - old_factors
    grown = dict(state)
    grown[f"{last}.weight"] = torch.cat([weight[:-2], weight.new_zeros(extra, weight.shape[1]), weight[-2:]])
    grown[f"{last}.bias"] = torch.cat([bias[:-2], bias.new_full((extra,), 0.5), bias[-2:]])
    return grown


def face_mask(factors: Tensor, resolution: int) -> Tensor:
    """(B, R, R) 1 where the face (head, ears) covers the pixel: where the background cannot show."""
    _BG = FACTORS.index("background")
    dark, light = factors.clone(), factors.clone()
    dark[:, _BG], light[:, _BG] = 0.0, 1.0
    return ((render(dark, resolution) - render(light, resolution)).abs().sum(dim=1) < 1e-4).float()


def _resize(images: Tensor, resolution: int) -> Tensor:
    if images.shape[-1] == resolution:
        return images
    return nn.functional.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)


def train_estimator(
    resolution: int = 64,
    minutes: float = 2.0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
    log_every: int = 200,
    init: str | Path | None = None,
    lr: float = 2e-3,
) -> FactorEstimator:
    """Fit the regressor on fresh renders for a time budget, then calibrate the face threshold.

    Training images carry the artefacts a small diffusion model leaves (:func:`_artefacts`),
    so that the estimator reads an edited sample's factors, not its speckle or its colour cast.
    ``init`` (an estimator directory) fine-tunes existing weights instead of starting afresh.
    """
    check_budget(minutes, batch_size, resolution, LOWPASS)  # the face check pools by LOWPASS
    device = resolve_device(device)
    generator = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)
    model = FactorRegressor(resolution)
    if init is not None:
        try:
            model = FactorEstimator.load(init, grow=True).regressor.train()
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise InputError(f"--init {init}: not an estimator directory ({exc})") from None
        if model.resolution != resolution:
            raise InputError(f"{init} reads {model.resolution} px images, not {resolution} px")
    model = model.to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    deadline, step = time.monotonic() + minutes * 60, 0
    start = time.monotonic()
    while time.monotonic() < deadline:
        factors = sample_factors(batch_size, generator, device, horse=True)
        images = _artefacts(render(factors, resolution), face_mask(factors, resolution), generator)
        loss = nn.functional.mse_loss(model(images), _targets(factors))
        frac = (time.monotonic() - start) / (minutes * 60)
        for group in optimiser.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        if step % log_every == 0:
            print(f"estimator step {step} loss {loss.item():.5f}", flush=True)
    estimator = FactorEstimator(model.eval().cpu(), face_threshold=float("inf"))
    estimator.calibrate(seed + 1)
    return estimator


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator, device: torch.device) -> Tensor:
    return (low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)).to(device)


def _artefacts(images: Tensor, mask: Tensor, generator: torch.Generator) -> Tensor:
    """What the built-in model's samples show and the renderer never draws, each on half the batch:
    over- or under-saturated colours, darker or brighter fur, a background tinted towards the fur, a colour cast,
    and speckle of varying strength; then :func:`_augment`'s blur and pixel noise.

    Factors are unchanged by all of these, so the regressor learns to look past them.
    """
    b, device = images.shape[0], images.device
    per_image = (b, 1, 1, 1)

    def half() -> Tensor:
        return _uniform(per_image, 0.0, 1.0, generator, device) < 0.5

    grey = images.mean(dim=1, keepdim=True)
    saturated = grey + _uniform(per_image, 0.7, 1.8, generator, device) * (images - grey)
    images = torch.where(half(), saturated, images)
    inside = mask[:, None]
    fur = (images * inside).sum(dim=(2, 3), keepdim=True) / inside.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    tint = _uniform(per_image, 0.0, 0.5, generator, device) * (1 - inside)
    images = torch.where(half(), images + tint * (fur - images), images)
    gain = _uniform(per_image, 0.6, 1.15, generator, device) * _uniform((b, 3, 1, 1), 0.9, 1.1, generator, device)
    offset = _uniform((b, 3, 1, 1), -0.05, 0.05, generator, device)
    images = torch.where(half(), images * gain + offset, images)
    speckle = torch.randn(images.shape, generator=generator, device=generator.device).to(device) * _uniform(per_image, 0.0, 0.15, generator, device)
    images = torch.where(half(), images + speckle, images)
    return _augment(images.clamp(0, 1), generator)


def _augment(images: Tensor, generator: torch.Generator) -> Tensor:
    """Small pixel noise and a random blur, as diffusion samples have."""
    b, _, r, _ = images.shape
    noise = torch.randn(images.shape, generator=generator, device=generator.device).to(images.device) * 0.02
    blur = torch.rand(b, generator=generator, device=generator.device).to(images.device) < 0.5
    soft = nn.functional.interpolate(
        nn.functional.interpolate(images, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False),
        size=(r, r),
        mode="bilinear",
        align_corners=False,
    )
    images = torch.where(blur[:, None, None, None], soft, images)
    return (images + noise).clamp(0, 1)
