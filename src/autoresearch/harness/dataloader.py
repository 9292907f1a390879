"""Packs pre-tokenised documents into BOS-aligned rows with no padding.

Each row holds T+1 tokens and begins at a document start (documents start with BOS).
Rows are filled best-fit: from a buffer of documents, place the largest one that still
fits the space left; when none fits, crop the shortest to fill the row exactly (its
tail is dropped). Inputs and targets are the row shifted by one.

Documents come from memory-mapped token files, and the buffer is kept sorted by length
so that each placement is one bisect and one numpy slice copy, not per-token Python.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator

import numpy as np
import torch

from autoresearch.harness.sources import DataError
from autoresearch.harness.tokens import TokenFile


def _shuffled_order(n_docs: int, seed: int) -> Iterator[tuple[int, int]]:
    """(doc index, epoch) forever; a fresh permutation per epoch, from seed."""
    epoch = 1
    while True:
        rng = np.random.default_rng([seed, epoch])
        for i in rng.permutation(n_docs).tolist():
            yield i, epoch
        epoch += 1


def _fixed_order(n_docs: int) -> Iterator[tuple[int, int]]:
    """(doc index, epoch) forever, always in file order."""
    epoch = 1
    while True:
        for i in range(n_docs):
            yield i, epoch
        epoch += 1


class BestFitPacker:
    def __init__(self, tokens: TokenFile, order: Iterator[tuple[int, int]], buffer_size: int = 1000):
        if len(tokens) == 0:
            raise DataError(f"no documents in {tokens.prefix}")
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self._tokens = np.asarray(tokens.tokens)  # plain view: memmap slicing is slower
        self._starts = tokens.offsets[:-1].tolist()
        self._lengths = tokens.lengths.tolist()
        self._order = order
        self._buffer_size = buffer_size
        # parallel lists kept sorted by (length, arrival) so bisect finds the best fit
        self._keys: list[tuple[int, int]] = []
        self._docs: list[int] = []
        self._arrivals = 0
        self.epoch = 1

    def _refill(self) -> None:
        keys, docs, lengths = self._keys, self._docs, self._lengths
        while len(keys) < self._buffer_size:
            doc, self.epoch = next(self._order)
            key = (lengths[doc], self._arrivals)
            self._arrivals += 1
            at = bisect_right(keys, key)
            keys.insert(at, key)
            docs.insert(at, doc)

    def fill(self, out: np.ndarray) -> None:
        """Fill every row of out (shape [B, T+1]) with packed documents."""
        tokens, starts = self._tokens, self._starts
        keys, docs = self._keys, self._docs
        width = out.shape[1]
        for row in out:
            pos = 0
            while pos < width:
                self._refill()
                space = width - pos
                # largest document with length <= space; keys sort by (length, arrival)
                at = bisect_right(keys, (space, self._arrivals)) - 1
                if at >= 0:
                    length = keys[at][0]
                else:
                    at, length = 0, space  # nothing fits: crop the shortest
                keys.pop(at)
                start = starts[docs.pop(at)]
                row[pos : pos + length] = tokens[start : start + length]
                pos += length


def _pinned(shape, pin: bool) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.int64, pin_memory=pin)


def make_loader(
    prepared,
    batch_size: int,
    seq_len: int,
    split: str,
    *,
    device="cpu",
    buffer_size: int = 1000,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Infinite (x, y, epoch) batches; x and y are int64 [batch_size, seq_len] on device.

    Train documents come in a fresh random order every epoch (from seed); other splits
    in file order. epoch counts passes over the split, from 1.
    """
    tokens = prepared.split(split)
    order = _shuffled_order(len(tokens), seed) if split == "train" else _fixed_order(len(tokens))
    packer = BestFitPacker(tokens, order, buffer_size)
    device = torch.device(device)
    cuda = device.type == "cuda"
    shape = (batch_size, seq_len + 1)
    # two host buffers used in turn, so one is filled while the other is still being
    # copied to the GPU; an event tells when a buffer is free again
    hosts = [_pinned(shape, cuda) for _ in range(2 if cuda else 1)]
    events = [None] * len(hosts)
    step = 0
    while True:
        slot = step % len(hosts)
        if events[slot] is not None:
            events[slot].synchronize()
        host = hosts[slot]
        packer.fill(host.numpy())
        if cuda:
            rows = host.to(device, non_blocking=True)
            events[slot] = torch.cuda.Event()
            events[slot].record()
            x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        else:
            x, y = host[:, :-1].clone(), host[:, 1:].clone()
        step += 1
        yield x, y, packer.epoch


def validation_batches(
    prepared, batch_size: int, seq_len: int, num_tokens: int, *, buffer_size: int = 1000
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Exactly num_tokens // (batch_size * seq_len) CPU batches of the val split.

    Always the same batches: documents in file order, same packing. If the split holds
    fewer tokens than asked for, it is read again from its first document (so a large
    evaluation on a small split scores some text more than once).
    """
    per_batch = batch_size * seq_len
    if num_tokens < per_batch:
        raise DataError(
            f"num_tokens={num_tokens} is less than one batch ({batch_size} x {seq_len} = {per_batch})"
        )
    tokens = prepared.split("val")
    packer = BestFitPacker(tokens, _fixed_order(len(tokens)), buffer_size)
    rows = np.empty((batch_size, seq_len + 1), dtype=np.int64)
    for _ in range(num_tokens // per_batch):
        packer.fill(rows)
        batch = torch.from_numpy(rows)
        yield batch[:, :-1].clone(), batch[:, 1:].clone()
