"""Captions for cat-people renders, written from their factors by a small grammar.

The text model learns what words mean only from these captions, so the grammar is the ground
truth of every prompt: a phrase is used only when its factor is clearly at one end (the
outer thirds), with a few paraphrases each so that the text encoder learns meanings rather
than fixed strings, and attributes come in random order and are sometimes left out. The words
of the grammar are also the tokenizer's vocabulary (:data:`WORDS`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from .render import FACTORS

#: Probability that a caption is replaced by the empty prompt (classifier-free guidance).
DROP = 0.1
#: Probability that an attribute clearly at one end is mentioned.
MENTION = 0.75
LOW, HIGH = 1 / 3, 2 / 3


@dataclass(frozen=True)
class Attribute:
    """A factor the grammar names at its low and high ends, with paraphrases for each."""

    factor: str
    low: tuple[str, ...]
    high: tuple[str, ...]


#: The attributes of the "with ..." clause; the first phrase of each end is the canonical one
#: (prompt-adherence checks use it).
ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("ears", ("small ears", "short ears", "tiny ears"), ("big ears", "long ears", "large ears")),
    Attribute("smile", ("a flat mouth", "a straight mouth", "a serious face"), ("a wide smile", "a big grin", "a happy smile")),
    Attribute("eyes", ("small eyes", "tiny eyes", "narrow eyes"), ("big eyes", "large eyes", "wide eyes")),
    Attribute("nose", ("a small nose", "a tiny nose", "a little nose"), ("a big nose", "a large nose", "a wide nose")),
)
#: Where the head sits: phrases for head_x and head_y at their ends.
POSITIONS: tuple[Attribute, ...] = (
    Attribute("head_x", ("on the left",), ("on the right",)),
    Attribute("head_y", ("near the top",), ("near the bottom",)),
)
BACKGROUND = Attribute("background", ("on a cool background", "on a blue background"), ("on a warm background", "on a peach background"))
#: Fur colours by hue (circular): the nearest centre names the colour.
COLOURS: tuple[tuple[str, float], ...] = (
    ("red", 0.0), ("orange", 0.08), ("yellow", 0.16), ("green", 0.33),
    ("teal", 0.5), ("blue", 0.64), ("purple", 0.76), ("pink", 0.9),
)
SPECIES = {"cat": ("a cat person", "a cat", "a cat face"), "horse": ("a horse person", "a horse", "a horse face"),
           "both": ("a cat horse person", "a horse cat person", "a half cat half horse person")}

#: Every word the grammar can write: the tokenizer's whole-word vocabulary.
WORDS: tuple[str, ...] = tuple(sorted({
    word
    for phrase in [
        *(p for a in (*ATTRIBUTES, *POSITIONS, BACKGROUND) for p in (*a.low, *a.high)),
        *(name for name, _ in COLOURS),
        *(p for ps in SPECIES.values() for p in ps),
        "with and fur",
    ]
    for word in phrase.split()
}))


def colour_name(hue: float) -> str:
    """The nearest named colour of a hue in [0, 1) (circular)."""
    return min(COLOURS, key=lambda c: min(abs(hue - c[1]), 1 - abs(hue - c[1])))[0]


def caption(factors: Tensor, rng: random.Random) -> str:
    """One caption for one factor vector (F,), e.g. "a horse person with big ears and a
    wide smile, green fur, on a warm background"."""
    value = {name: float(factors[i]) for i, name in enumerate(FACTORS)}
    horse = value["horse"]
    species = "cat" if horse < LOW else "horse" if horse > HIGH else "both"
    parts = [rng.choice(SPECIES[species])]
    features = [_phrase(a, value[a.factor], rng) for a in ATTRIBUTES]
    features = [f for f in features if f]
    rng.shuffle(features)
    if features:
        parts.append("with " + (", ".join(features[:-1]) + " and " + features[-1] if len(features) > 1 else features[0]))
    text = " ".join(parts)
    extras = []
    if rng.random() < MENTION:
        extras.append(f"{colour_name(value['hue'])} fur")
    extras += [p for a in POSITIONS if (p := _phrase(a, value[a.factor], rng))]
    if background := _phrase(BACKGROUND, value["background"], rng):
        extras.append(background)
    return ", ".join([text, *extras])


def _phrase(attribute: Attribute, value: float, rng: random.Random) -> str | None:
    """A paraphrase for a factor at one end, mentioned with probability MENTION; else None."""
    if LOW <= value <= HIGH or rng.random() >= MENTION:
        return None
    return rng.choice(attribute.low if value < LOW else attribute.high)


def captions(factors: Tensor, generator: torch.Generator, drop: float = DROP) -> list[str]:
    """Captions for a batch of factors (B, F); a fraction ``drop`` become "" (for CFG).

    Deterministic given the generator (its state advances by one draw), so a resumed
    training run writes the same captions as an uninterrupted one.
    """
    rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
    return ["" if rng.random() < drop else caption(row, rng) for row in factors.cpu()]
