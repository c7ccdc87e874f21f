"""A small character-level transformer language model trained on Python's own standard library.

The workload of the language-model benchmarks (``benchmarks.workloads.lm`` and ``benchmarks.workloads.peer``): nothing
is downloaded, the text ships with the interpreter that runs the benchmark.

* **Text**: the top-level ``*.py`` files of the standard library (``sysconfig``'s ``stdlib``
  path), read in sorted order. A file belongs to validation when ``crc32(name) % 10 == 0``, else to
  training: a fixed split by file name, so no window straddles the two. The text differs between
  Python versions; :func:`corpus` records the version and a SHA-256 of both splits.
* **Vocabulary**: fixed, independent of the text: tab, newline and printable ASCII (32..126), and
  one token for every other character: 98 tokens.
* **Batches**: windows of ``seq_len + 1`` tokens at random offsets of the training stream, drawn
  from a generator seeded with ``(seed, rank)``; the validation set is a fixed list of windows
  (evenly spaced offsets), the same for every seed and rank.
* **Model**: :class:`CharTransformer`, decoder-only: token and learned position embeddings,
  ``nn.TransformerEncoder`` layers (pre-norm, GELU, no dropout) under a causal mask, a linear head.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

VOCAB = ["\t", "\n", *[chr(c) for c in range(32, 127)]]
UNKNOWN = len(VOCAB)
VOCAB_SIZE = len(VOCAB) + 1
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}


@dataclass(frozen=True)
class Corpus:
    train: Tensor  # int64 token ids
    val: Tensor
    description: dict[str, object]


def encode(text: str) -> Tensor:
    return torch.tensor([_INDEX.get(ch, UNKNOWN) for ch in text], dtype=torch.long)


def _is_validation(name: str) -> bool:
    return zlib.crc32(name.encode()) % 10 == 0


@cache
def corpus(stdlib: str | None = None) -> Corpus:
    """The token streams of the training and validation files (cached per process)."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no *.py files in the standard library directory {root}")
    parts: dict[bool, list[str]] = {True: [], False: []}
    for p in files:
        parts[_is_validation(p.name)].append(p.read_text(encoding="utf-8", errors="replace"))
    train_text, val_text = "".join(parts[False]), "".join(parts[True])
    import platform

    description: dict[str, object] = {
        "source": f"top-level *.py files of the Python {platform.python_version()} standard library",
        "files": len(files),
        "train_chars": len(train_text),
        "val_chars": len(val_text),
        "split": "validation = crc32(file name) % 10 == 0",
        "vocab_size": VOCAB_SIZE,
        "sha256": hashlib.sha256((train_text + "\0" + val_text).encode()).hexdigest()[:16],
    }
    return Corpus(encode(train_text), encode(val_text), description)


def train_batch(data: Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch_size`` random windows: inputs ``x`` and next-character targets ``y``, both ``(B, T)``."""
    starts = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=generator)
    windows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def val_batches(data: Tensor, num_windows: int, seq_len: int, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """A fixed validation set: ``num_windows`` evenly spaced windows, in batches of ``batch_size``."""
    stride = max(1, (data.numel() - seq_len - 1) // num_windows)
    windows = torch.stack([data[i * stride : i * stride + seq_len + 1] for i in range(num_windows)])
    return [(w[:, :-1], w[:, 1:]) for w in windows.split(batch_size)]


class CharTransformer(nn.Module):
    """Decoder-only character transformer: ``logits = head(blocks(embed(x) + pos))`` under a causal mask."""

    def __init__(self, d_model: int = 256, nhead: int = 4, num_layers: int = 4, seq_len: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, d_model)
        self.pos = nn.Parameter(torch.zeros(seq_len, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model,
            nhead,
            dim_feedforward=4 * d_model,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB_SIZE)
        nn.init.normal_(self.pos, std=0.02)
        # Boolean (True = masked), not the -inf float mask: strategies that average floating-point
        # buffers (diloco, cocodsgd, ...) would average -inf and refuse the non-finite result.
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
        self.register_buffer("mask", causal, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        t = x.shape[1]
        h = self.embed(x) * math.sqrt(self.embed.embedding_dim) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        out: Tensor = self.head(self.norm(h))
        return out


def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean next-character cross-entropy (nats per character)."""
    logits = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
