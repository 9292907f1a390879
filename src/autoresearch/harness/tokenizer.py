"""Byte-level BPE tokenizer: merges learned by rustbpe, encoding done by tiktoken.

rustbpe learns merges quickly from a stream of text; tiktoken encodes batches in
native threads. The tokenizer is saved as plain JSON (ranks as hex bytes) so a cached
dataset never depends on pickle compatibility.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# GPT-4's split pattern, except that numbers split into groups of at most 2 digits
# (a small vocabulary wastes fewer slots on 3-digit number tokens).
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}|"""
    r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# Reserved specials, appended after the learned tokens. The first one is BOS: every
# document starts with it, so it is never a prediction target worth scoring.
SPECIAL_TOKENS = ["<|bos|>", "<|reserved_1|>", "<|reserved_2|>", "<|reserved_3|>"]

TOKENIZER_FILE = "tokenizer.json"
_DEFAULT_THREADS = min(8, os.cpu_count() or 1)


class Tokenizer:
    def __init__(self, ranks: list[bytes], pattern: str = SPLIT_PATTERN):
        import tiktoken

        self._ranks = list(ranks)  # token id -> raw bytes, for ids below the specials
        self.pattern = pattern
        n = len(self._ranks)
        self._specials = {s: n + i for i, s in enumerate(SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding(
            "autoresearch",
            pat_str=pattern,
            mergeable_ranks={b: i for i, b in enumerate(self._ranks)},
            special_tokens=self._specials,
        )

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
        """Learn merges until vocab_size tokens including the specials.

        A corpus too small to supply that many merges yields a smaller vocabulary;
        get_vocab_size() reports the real one.
        """
        import rustbpe

        learned = vocab_size - len(SPECIAL_TOKENS)
        if learned < 256:
            raise ValueError(
                f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} "
                f"(256 bytes + {len(SPECIAL_TOKENS)} specials), got {vocab_size}"
            )
        trainer = rustbpe.Tokenizer()
        trainer.train_from_iterator(iter(texts), learned, pattern=SPLIT_PATTERN)
        pairs = sorted(trainer.get_mergeable_ranks(), key=lambda p: p[1])
        if [r for _, r in pairs] != list(range(len(pairs))):
            raise RuntimeError("rustbpe returned non-contiguous token ranks")
        return cls([bytes(b) for b, _ in pairs], SPLIT_PATTERN)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / TOKENIZER_FILE
        payload = {
            "pattern": self.pattern,
            "special_tokens": SPECIAL_TOKENS,
            "ranks": [b.hex() for b in self._ranks],
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        payload = json.loads((Path(directory) / TOKENIZER_FILE).read_text())
        if payload["special_tokens"] != SPECIAL_TOKENS:
            raise ValueError("tokenizer was saved with different special tokens")
        return cls([bytes.fromhex(h) for h in payload["ranks"]], payload["pattern"])

    def get_vocab_size(self) -> int:
        return len(self._ranks) + len(SPECIAL_TOKENS)

    def get_bos_token_id(self) -> int:
        return self._specials[SPECIAL_TOKENS[0]]

    def encode(self, text, prepend: int | None = None, num_threads: int = _DEFAULT_THREADS):
        """A string -> list of ids; a list of strings -> list of lists (one batched call).

        Special-token text in the input is encoded as ordinary bytes, never as a special.
        """
        if isinstance(text, str):
            ids = self._enc.encode_ordinary(text)
            return [prepend, *ids] if prepend is not None else ids
        batch = self._enc.encode_ordinary_batch(list(text), num_threads=num_threads)
        if prepend is not None:
            for ids in batch:
                ids.insert(0, prepend)
        return batch

    def decode(self, ids) -> str:
        return self._enc.decode([int(i) for i in ids])

    def token_byte_lengths(self) -> np.ndarray:
        """Raw byte length of every token id; 0 for specials.

        Taken from the token's own bytes, so a token holding part of a multi-byte
        character counts what it really covers, not a re-encoded replacement char.
        """
        lengths = np.zeros(self.get_vocab_size(), dtype=np.int32)
        lengths[: len(self._ranks)] = [len(b) for b in self._ranks]
        return lengths

    def token_bytes(self, token_id: int) -> bytes:
        if token_id < len(self._ranks):
            return self._ranks[token_id]
        return b""
