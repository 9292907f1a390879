"""Token files: every document's tokens in one flat uint16 array, plus boundaries.

`<prefix>.tokens` is the raw uint16 array (memory-mapped when read) and
`<prefix>.offsets.npy` holds n_docs + 1 int64 boundaries, so document i is
tokens[offsets[i]:offsets[i+1]]. Training reads slices of it and never tokenises.
"""
from __future__ import annotations

import os
from array import array
from pathlib import Path

import numpy as np

TOKEN_DTYPE = np.uint16
MAX_VOCAB = int(np.iinfo(TOKEN_DTYPE).max) + 1


def token_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.tokens")


def offsets_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.offsets.npy")


class TokenWriter:
    """Appends documents to disk as they come; nothing is visible until close().

    Both files are written under temporary names and renamed at the end, the offsets
    last, so a reader never sees a half-written split.
    """

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_tokens = Path(f"{token_path(prefix)}.tmp")
        self._file = open(self._tmp_tokens, "wb")
        self._offsets = array("q", [0])  # compact: 8 bytes per document
        self.closed = False

    @property
    def num_docs(self) -> int:
        return len(self._offsets) - 1

    @property
    def num_tokens(self) -> int:
        return self._offsets[-1]

    def append(self, ids) -> None:
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError("a document must be a non-empty 1-D sequence of token ids")
        if arr.min() < 0 or arr.max() >= MAX_VOCAB:
            raise ValueError(f"token ids must lie in [0, {MAX_VOCAB})")
        self._file.write(arr.astype(TOKEN_DTYPE, copy=False).tobytes())
        self._offsets.append(self._offsets[-1] + arr.size)

    def extend(self, docs) -> None:
        for ids in docs:
            self.append(ids)

    def close(self) -> None:
        if self.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp_tokens, token_path(self.prefix))
        tmp_offsets = Path(f"{offsets_path(self.prefix)}.tmp")
        with open(tmp_offsets, "wb") as f:
            np.save(f, np.frombuffer(self._offsets, dtype=np.int64))
        os.replace(tmp_offsets, offsets_path(self.prefix))
        self.closed = True

    def abort(self) -> None:
        """Drop everything written so far."""
        if not self._file.closed:
            self._file.close()
        self._tmp_tokens.unlink(missing_ok=True)
        self.closed = True

    def __enter__(self) -> "TokenWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class TokenFile:
    """Read side: documents as zero-copy views into the memory-mapped tokens."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        if not offsets_path(prefix).is_file() or not token_path(prefix).is_file():
            raise FileNotFoundError(f"no token file at {self.prefix}")
        self.offsets = np.load(offsets_path(prefix))
        n = int(self.offsets[-1])
        if token_path(prefix).stat().st_size != n * np.dtype(TOKEN_DTYPE).itemsize:
            raise ValueError(f"{token_path(prefix)} does not match its offsets")
        # np.memmap cannot map an empty file
        self.tokens = (
            np.memmap(token_path(prefix), dtype=TOKEN_DTYPE, mode="r") if n else np.zeros(0, TOKEN_DTYPE)
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"document {i} out of range ({len(self)} documents)")
        i %= len(self)
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]
