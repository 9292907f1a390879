from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from autoresearch.harness.dataloader import BestFitPacker, make_loader, validation_batches
from autoresearch.harness.sources import DataError
from autoresearch.harness.tokens import TokenFile, TokenWriter

BOS = 0


def write_docs(prefix: Path, lengths) -> list[np.ndarray]:
    """Documents [BOS, unique ids...]: every non-BOS token says which doc and where."""
    docs, next_id = [], 1
    with TokenWriter(prefix) as w:
        for n in lengths:
            doc = np.array([BOS, *range(next_id, next_id + n - 1)], dtype=np.uint16)
            next_id += n - 1
            w.append(doc)
            docs.append(doc)
    return docs


@dataclass(frozen=True)
class FakePrepared:
    root: Path

    def split(self, name):
        return TokenFile(self.root / name)


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    train = write_docs(tmp_path / "train", rng.integers(2, 90, size=300))
    val = write_docs(tmp_path / "val", rng.integers(2, 90, size=40))
    return FakePrepared(tmp_path), train, val


def segments(row: np.ndarray) -> list[np.ndarray]:
    starts = np.flatnonzero(row == BOS)
    return np.split(row, starts[1:])


def check_rows(rows: np.ndarray, docs: list[np.ndarray]) -> None:
    by_first = {int(d[1]): d for d in docs if len(d) > 1}
    for row in rows:
        assert row[0] == BOS
        parts = segments(row)
        for k, part in enumerate(parts):
            doc = by_first[int(part[1])] if len(part) > 1 else np.array([BOS])
            # every piece is a real document from its start; only the last may be cut
            assert np.array_equal(part, doc[: len(part)])
            if k < len(parts) - 1:
                assert len(part) == len(doc)


def test_rows_are_packed_documents_without_padding(data):
    prepared, train, _ = data
    loader = make_loader(prepared, 8, 63, "train", buffer_size=16)
    for _ in range(20):
        x, y, epoch = next(loader)
        assert x.shape == y.shape == (8, 63) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        rows = torch.cat([x, y[:, -1:]], dim=1).numpy()
        check_rows(rows, train)


def test_best_fit_takes_the_largest_document_that_fits(tmp_path):
    docs = write_docs(tmp_path / "t", [5, 3, 8, 2])
    packer = BestFitPacker(TokenFile(tmp_path / "t"), ((i, 1) for i in itertools.cycle(range(4))), buffer_size=4)
    rows = np.full((1, 10), -1, dtype=np.int64)
    packer.fill(rows)
    # 8 is the largest that fits in 10, then 2 fills the rest (not 5 or 3)
    assert rows[0].tolist() == [*docs[2], *docs[3]]


def test_crops_the_shortest_when_nothing_fits(tmp_path):
    docs = write_docs(tmp_path / "t", [9, 7, 8])
    packer = BestFitPacker(TokenFile(tmp_path / "t"), ((i, 1) for i in itertools.cycle(range(3))), buffer_size=3)
    rows = np.full((1, 12), -1, dtype=np.int64)
    packer.fill(rows)
    # 9 fits first; 3 slots remain, no doc is that short: the shortest (7) is cropped
    assert rows[0].tolist() == [*docs[0], *docs[1][:3]]


def test_epochs_count_and_seeds_shuffle(data):
    prepared, train, _ = data
    total = sum(len(d) for d in train)
    loader = make_loader(prepared, 4, 127, "train", buffer_size=8)
    epochs = [next(loader)[2] for _ in range(3 * total // (4 * 128) + 5)]
    assert epochs[0] == 1 and epochs[-1] >= 3 and epochs == sorted(epochs)
    first = lambda seed: next(make_loader(prepared, 4, 127, "train", seed=seed))[0]
    assert torch.equal(first(1), first(1))
    assert not torch.equal(first(1), first(2))


def test_validation_batches_are_deterministic_and_counted(data):
    prepared, _, val = data
    total_val = sum(len(d) for d in val)
    num_tokens = 3 * total_val + 100  # more than the split holds: it cycles
    a = list(validation_batches(prepared, 4, 32, num_tokens))
    b = list(validation_batches(prepared, 4, 32, num_tokens))
    assert len(a) == num_tokens // (4 * 32)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.device.type == "cpu" and xa.dtype == torch.int64 and xa.shape == (4, 32)
        check_rows(torch.cat([xa, ya[:, -1:]], dim=1).numpy(), val)
    # the whole split sits in the buffer: the first row opens with the longest doc that fits
    best = max((len(d), i) for i, d in enumerate(val) if len(d) <= 33)[1]
    first_row = torch.cat([a[0][0][0], a[0][1][0, -1:]]).numpy()
    assert np.array_equal(segments(first_row)[0], val[best])
    with pytest.raises(DataError, match="less than one batch"):
        next(validation_batches(prepared, 4, 32, 100))


def test_throughput_gpu_shape(tmp_path):
    # documents a few hundred tokens long, like web text; B=128, T=2048, one thread
    rng = np.random.default_rng(1)
    with TokenWriter(tmp_path / "train") as w:
        for n in rng.geometric(1 / 600, size=8000).clip(2, 20000):
            w.append(rng.integers(1, 8192, size=n, dtype=np.uint16))
    torch.set_num_threads(1)
    loader = make_loader(FakePrepared(tmp_path), 128, 2048, "train")
    next(loader)
    started, n = time.perf_counter(), 5
    for _ in range(n):
        next(loader)
    rate = n * 128 * 2048 / (time.perf_counter() - started)
    assert rate > 5.1e6, f"{rate / 1e6:.1f}M tokens/s"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches(data):
    prepared, _, _ = data
    cpu = make_loader(prepared, 8, 63, "train", seed=3)
    gpu = make_loader(prepared, 8, 63, "train", seed=3, device="cuda")
    for _ in range(10):  # more than the two pinned buffers, so reuse is exercised
        (xc, yc, ec), (xg, yg, eg) = next(cpu), next(gpu)
        assert xg.is_cuda and xg.is_contiguous() and ec == eg
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
