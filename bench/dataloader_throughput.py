"""Tokens per second of the training dataloader, on one CPU thread.

Compares our loader (pre-tokenised memory-mapped documents, bisect best-fit packing)
with the approach that tokenises each document during training and packs best-fit
with Python lists, on the same built-in data, at the gpu shape (128 x 2048) and the
cpu profile's shape (16 x 256). A gpu baseline consumes about 1.7M tokens/s, so the
loader must stay well ahead of that to never starve the GPU.

    python bench/dataloader_throughput.py [--vocab 8192] [--seconds 5]
"""
from __future__ import annotations

import argparse
import time

import torch

from autoresearch.harness.dataloader import make_loader
from autoresearch.harness.prepare import prepare
from autoresearch.harness.sources import builtin_documents

GPU_BASELINE_TOKENS_PER_S = 1.7e6
SHAPES = [(128, 2048), (16, 256)]


def tokenise_on_the_fly_loader(tokenizer, batch_size, seq_len, buffer_size=1000, doc_batch=128):
    """The on-the-fly approach: encode documents as they are needed, pack with lists."""
    bos = tokenizer.get_bos_token_id()
    texts = list(builtin_documents("train"))  # text in memory: only tokenising is timed
    width = seq_len + 1

    def token_docs():
        while True:
            for i in range(0, len(texts), doc_batch):
                yield from tokenizer.encode(texts[i : i + doc_batch], prepend=bos, num_threads=1)

    source = token_docs()
    buffer: list[list[int]] = []
    while True:
        rows = []
        for _ in range(batch_size):
            row: list[int] = []
            while len(row) < width:
                while len(buffer) < buffer_size:
                    buffer.append(next(source))
                space = width - len(row)
                best, best_len = -1, -1
                for i, doc in enumerate(buffer):  # linear scan for the best fit
                    if best_len < len(doc) <= space:
                        best, best_len = i, len(doc)
                if best >= 0:
                    row.extend(buffer.pop(best))
                else:
                    shortest = min(range(len(buffer)), key=lambda i: len(buffer[i]))
                    row.extend(buffer.pop(shortest)[:space])
            rows.append(row)
        batch = torch.tensor(rows, dtype=torch.long)
        yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def tokens_per_second(loader, batch_size, seq_len, seconds) -> float:
    next(loader)  # warm up: first buffer fill
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        next(loader)
        n += 1
    return n * batch_size * seq_len / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8192, help="8192 (gpu profile) or 4096 (cpu)")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)

    started = time.perf_counter()
    data = prepare("builtin", args.vocab, workers=1, progress=False)
    print(f"builtin data at vocab {args.vocab}: {data.root} ({time.perf_counter() - started:.1f} s)")
    tokenizer = data.tokenizer()
    for b, t in SHAPES:
        ours = tokens_per_second(make_loader(data, b, t, "train"), b, t, args.seconds)
        fly = tokens_per_second(tokenise_on_the_fly_loader(tokenizer, b, t), b, t, args.seconds)
        print(
            f"B={b:<3} T={t:<4}  token files: {ours / 1e6:7.2f}M tok/s   "
            f"tokenise on the fly: {fly / 1e6:6.2f}M tok/s   ratio {ours / fly:5.1f}x   "
            f"vs gpu baseline 1.7M: {ours / GPU_BASELINE_TOKENS_PER_S:5.1f}x"
        )


if __name__ == "__main__":
    main()
