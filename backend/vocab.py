"""A CLIP tokenizer whose whole words come from a given word list.

CLIP's tokenizer is byte-level BPE: every byte is a token, and the merges build longer
tokens. Writing one merge chain per word (c+a, ca+t</w>) gives each listed word a single
token while any other text still tokenizes, byte by byte, so no prompt is ever refused.
The files are the real ``vocab.json`` / ``merges.txt`` pair that ``CLIPTokenizer`` reads
and ``save_pretrained`` writes, so the tokenizer loads like any Stable Diffusion one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Iterable


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable-unicode table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_clip_tokenizer_files(directory: Path, words: Iterable[str]) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt``: the 256 byte characters, the same with the
    ``</w>`` end-of-word suffix, one merge chain per word, then the two special tokens."""
    alphabet = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    merges: list[str] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        # Greedy BPE merges the lowest-ranked pair first, so a chain written for "ears" (e a) can
        # split "near" (n ea r); merge what remains of the word, in order, until it is one token.
        pieces = _bpe([*word[:-1], word[-1] + "</w>"], ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            ranks[pair] = len(ranks)
            merges.append(f"{pair[0]} {pair[1]}")
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = _bpe(pieces, ranks)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word's pieces: merge the lowest-ranked adjacent pair until none applies."""
    pieces = list(pieces)
    while len(pieces) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def clip_tokenizer(words: Iterable[str], max_length: int = 77):
    """A ``CLIPTokenizer`` with one token per listed word.

    transformers 5 pitfall: ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently ignores
    the files and yields a 2-token tokenizer; the files must be passed as ``vocab=``/``merges=``.
    """
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_path, merges_path = write_clip_tokenizer_files(Path(tmp), words)
        tokenizer = CLIPTokenizer(vocab=str(vocab_path), merges=str(merges_path), model_max_length=max_length)
    if len(tokenizer) <= 2:
        raise RuntimeError("CLIPTokenizer ignored the vocab/merges files")
    return tokenizer
