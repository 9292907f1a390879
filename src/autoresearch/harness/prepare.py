"""Prepare a data source once per machine: fetch, learn the BPE, tokenise into files.

Layout under cache_root():
    datasets/<dataset_id>/raw/                     downloaded climbmix shards
    datasets/<dataset_id>/v<vocab>/tokenizer.json  the tokenizer
    datasets/<dataset_id>/v<vocab>/{train,val}.*   token files (see tokens.py)
    datasets/<dataset_id>/v<vocab>/DONE            written last; its presence = ready

DONE also records the sha256 and size of every other file in the folder ("files"), so
verify_prepared() can tell whether anything (a training run, say) changed the data since.

The v<vocab> folder is built under a temporary name and renamed into place, so a crash
or a concurrent prepare never leaves a half-made dataset that looks finished.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoresearch.harness.sources import (
    BUILTIN,
    CLIMBMIX,
    FILES,
    DataError,
    Source,
    builtin_documents,
    capped_for_tokenizer,
    climbmix_documents,
    file_documents,
    parse_source,
)
from autoresearch.harness.tokenizer import Tokenizer
from autoresearch.harness.tokens import MAX_VOCAB, TokenFile, TokenWriter
from autoresearch.paths import cache_root

DONE_FILE = "DONE"
MANIFEST_KEY = "files"  # in DONE: {name: {"sha256": ..., "size": ...}} of every other file
HASH_CHUNK = 1 << 20
ENCODE_BATCH_CHARS = 8_000_000  # text handed to the encoder per batched call


@dataclass(frozen=True)
class PreparedData:
    root: Path  # the v<vocab> folder
    vocab_size: int  # as requested; tokenizer().get_vocab_size() may be smaller

    def tokenizer(self) -> Tokenizer:
        return _load_tokenizer(str(self.root))

    def token_bytes(self):
        """int32 tensor [vocab]: true byte length of each token id, 0 for specials."""
        import torch

        return torch.from_numpy(self.tokenizer().token_byte_lengths())

    def split(self, name: str) -> TokenFile:
        if name not in ("train", "val"):
            raise DataError(f"unknown split {name!r}; valid splits: train, val")
        return TokenFile(self.root / name)

    def info(self) -> dict:
        """What was recorded when the data was prepared (source, counts, time)."""
        return json.loads((self.root / DONE_FILE).read_text())


@functools.lru_cache(maxsize=8)
def _load_tokenizer(root: str) -> Tokenizer:
    return Tokenizer.load(root)


def dataset_id(source: str) -> str:
    parsed = parse_source(source)
    if parsed.kind == FILES:
        return "files-" + hashlib.sha256(str(parsed.path).encode()).hexdigest()[:8]
    return parsed.kind


def dataset_dir(source: str) -> Path:
    return cache_root() / "datasets" / dataset_id(source)


FORMAT_VERSION = 2  # bump when documents or token files change: old caches are then rebuilt


def prepared_dir(source: str, vocab_size: int) -> Path:
    return dataset_dir(source) / f"v{vocab_size}-f{FORMAT_VERSION}"


def prepare_command(source: str, vocab_size: int) -> str:
    """The command that makes load_prepared(source, vocab_size) succeed."""
    from autoresearch.harness.profiles import PROFILES

    names = [p.name for p in PROFILES.values() if p.vocab_size == vocab_size]
    profile = f" --profile {names[0]}" if names else ""
    return f"autoresearch prepare --data {source}{profile}"


def load_prepared(source: str, vocab_size: int) -> PreparedData:
    root = prepared_dir(source, vocab_size)
    if not (root / DONE_FILE).is_file():
        raise DataError(
            f"data {source!r} is not prepared for vocabulary {vocab_size} (looked in {root}); "
            f"run: {prepare_command(source, vocab_size)}"
        )
    return PreparedData(root, vocab_size)


# --- integrity of prepared data ----------------------------------------------------------------
_HASHES: dict[Path, tuple] = {}  # path -> (stat key, sha256) from the last full hash
_PINNED: dict[Path, dict] = {}  # folder -> the manifest this process saw first


def _stat_key(st: os.stat_result) -> tuple:
    # ctime changes on every write and a user cannot set it back, unlike mtime
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict:
    return {p.name: {"sha256": _sha256_file(p), "size": p.stat().st_size}
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != DONE_FILE}


def _has_manifest(root: Path) -> bool:
    try:
        return bool(json.loads((root / DONE_FILE).read_text()).get(MANIFEST_KEY))
    except (OSError, ValueError, AttributeError):
        return False


def _check_file(path: Path, want: dict) -> str | None:
    """None when `path` still has the recorded size and hash; rehashes only when its stat changed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path.name} is missing"
    if not stat.S_ISREG(st.st_mode):
        return f"{path.name} is not a regular file (a link or folder was put in its place)"
    if st.st_size != want.get("size"):
        return f"{path.name} has {st.st_size} bytes, {want.get('size')} were recorded"
    key = _stat_key(st)  # taken before hashing: a write during the hash changes it for next time
    cached = _HASHES.get(path)
    digest = cached[1] if cached and cached[0] == key else _sha256_file(path)
    _HASHES[path] = (key, digest)
    if digest != want.get("sha256"):
        return f"{path.name} has changed since it was prepared (sha256 {digest[:12]}, recorded {str(want.get('sha256'))[:12]})"
    return None


def verify_prepared(prepared: PreparedData) -> list[str]:
    """Problems with the prepared files (empty when intact), checked against DONE's manifest.

    The first call hashes every file; later calls only stat them unless one changed. The
    manifest itself is pinned in memory at first sight, so a run that rewrote both a token
    file and DONE is still caught by a long-lived process such as the loop.
    """
    root = prepared.root
    try:
        info = json.loads((root / DONE_FILE).read_text())
    except (OSError, ValueError) as e:
        return [f"{root / DONE_FILE} cannot be read ({e}): delete {root} and re-run `autoresearch prepare`"]
    command = prepare_command(info.get("source") or "<your --data>", prepared.vocab_size)
    files = info.get(MANIFEST_KEY)
    if not isinstance(files, dict) or not files:
        return [f"{root} was prepared by an older autoresearch that recorded no file hashes, so it cannot be "
                f"checked: re-run `{command}` (it rebuilds the data with a manifest)"]
    pinned = _PINNED.setdefault(root, files)
    problems = []
    if files != pinned:
        problems.append(f"{root / DONE_FILE}: its recorded file hashes changed while this process used the data")
    for name, want in sorted(pinned.items()):
        problem = _check_file(root / name, want)
        if problem:
            problems.append(problem)
    for path in sorted(root.iterdir()):
        if path.name not in pinned and path.name != DONE_FILE:
            problems.append(f"{path.name} was added after the data was prepared")
    return [f"{root}: {p}; delete that folder and re-run `{command}`" for p in problems]


def _documents(src: Source, split: str, raw_dir: Path, num_train_shards: int) -> Iterator[str]:
    if src.kind == BUILTIN:
        return builtin_documents(split)
    if src.kind == CLIMBMIX:
        return climbmix_documents(raw_dir, split, num_train_shards)
    return file_documents(src.path, split)


def _batches(docs: Iterable[str], max_chars: int) -> Iterator[list[str]]:
    batch, size = [], 0
    for text in docs:
        batch.append(text)
        size += len(text)
        if size >= max_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _tokenise(tokenizer: Tokenizer, docs: Iterable[str], prefix: Path, workers: int, bar, label: str) -> dict:
    bos = tokenizer.get_bos_token_id()
    task = bar.add_task(label, total=None) if bar else None
    with TokenWriter(prefix) as writer:
        for batch in _batches(docs, ENCODE_BATCH_CHARS):
            for ids in tokenizer.encode(batch, prepend=bos, num_threads=workers):
                writer.append(np.asarray(ids, dtype=np.uint16))
            if bar:
                bar.update(task, completed=writer.num_docs,
                           description=f"{label}: {writer.num_tokens:,} tokens")
        if writer.num_docs == 0:
            raise DataError(f"the {prefix.name} split has no documents")
        return {"docs": writer.num_docs, "tokens": writer.num_tokens}


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,} docs"),
                    TimeElapsedColumn())


def prepare(
    source: str,
    vocab_size: int,
    *,
    base_url: str | None = None,
    num_train_shards: int = 10,
    progress: bool = True,
    workers: int = 4,
) -> PreparedData:
    """Make `source` ready at `vocab_size`; returns at once if it already is.

    climbmix: the dataset id does not include num_train_shards, so the first
    successful prepare decides how many shards a vocabulary's token files hold.
    """
    if not 256 + 4 <= vocab_size <= MAX_VOCAB:
        raise DataError(f"vocab_size must be between 260 and {MAX_VOCAB}, got {vocab_size}")
    src = parse_source(source)
    final = prepared_dir(source, vocab_size)
    if _has_manifest(final):
        return PreparedData(final, vocab_size)
    # no DONE, or one from an older version without file hashes: (re)build

    raw_dir = dataset_dir(source) / "raw"
    started = time.monotonic()
    if src.kind == CLIMBMIX:
        from autoresearch.harness.download import download_shards

        download_shards(raw_dir, num_train_shards, base_url=base_url, workers=workers, progress=progress)

    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        train_docs = _documents(src, "train", raw_dir, num_train_shards)
        tokenizer = Tokenizer.train(capped_for_tokenizer(train_docs), vocab_size)
        tokenizer.save(work)
        bar = _progress(progress)
        if bar:
            bar.start()
        try:
            counts = {
                split: _tokenise(tokenizer, _documents(src, split, raw_dir, num_train_shards),
                                 work / split, workers, bar, f"tokenising {split}")
                for split in ("train", "val")
            }
        finally:
            if bar:
                bar.stop()
        info = {
            "source": source,
            "dataset_id": dataset_id(source),
            "path": str(src.path) if src.path else None,
            "vocab_size": vocab_size,
            "tokenizer_vocab_size": tokenizer.get_vocab_size(),
            "num_train_shards": num_train_shards if src.kind == CLIMBMIX else None,
            "splits": counts,
            "seconds": round(time.monotonic() - started, 2),
            MANIFEST_KEY: _manifest(work),
        }
        (work / DONE_FILE).write_text(json.dumps(info, indent=2))
        _publish(work, final)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return PreparedData(final, vocab_size)


def _publish(work: Path, final: Path) -> None:
    """Rename the finished folder into place; a finished copy with a manifest already there wins."""
    if final.exists() and not _has_manifest(final):
        # leftovers of an interrupted run, or data from an older version: moved aside, then deleted
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        try:
            os.rename(final, old / "data")
        except FileNotFoundError:
            pass  # a concurrent prepare moved it first
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(work, final)
    except OSError:
        if not _has_manifest(final):
            raise
