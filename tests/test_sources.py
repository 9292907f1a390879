from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoresearch.harness import sources
from autoresearch.harness.sources import (
    DataError,
    builtin_documents,
    capped_for_tokenizer,
    climbmix_documents,
    climbmix_shard_name,
    file_documents,
    parse_source,
)


def _digest(docs) -> str:
    return hashlib.sha256("\n".join(docs).encode()).hexdigest()


def test_builtin_verse_runs_and_fixed_split():
    train, val = list(builtin_documents("train")), list(builtin_documents("val"))
    assert (len(train), len(val)) == (4486, 479)  # val: chapters 9, 19, ..., 1179 (0-based)
    assert max(len(doc) for doc in train + val) <= 1000  # runs of verses, not whole chapters
    assert train[0].startswith("In the beginning God created the heaven and the earth. And the earth")
    assert val[0].startswith("Now these are the generations of the sons of Noah")  # Genesis 10
    # pinned: every machine must score on exactly these bytes
    assert _digest(val) == "1f920540465eb774e3edc47a33dbef6585422e38d89910f04c64d7b291bfc1a3"
    assert _digest(train) == "cda6c4da27fe623d595d4b684214ea7daf95395c08428df31ddfa1621e19e55b"


def test_parse_source(tmp_path):
    assert parse_source("builtin").kind == "builtin"
    assert parse_source("climbmix").kind == "climbmix"
    src = parse_source(str(tmp_path))
    assert src.kind == "files" and src.path == tmp_path.resolve()
    assert parse_source(f"files:{tmp_path}").path == tmp_path.resolve()
    with pytest.raises(DataError, match="builtin.*climbmix"):
        parse_source("tinystories")
    with pytest.raises(DataError, match="unknown split"):
        next(builtin_documents("test"))


def _write_folder(root, n_txt=30):
    root.mkdir()
    for i in range(n_txt):
        (root / f"doc{i:02d}.txt").write_text(f"text file number {i}\n\nsecond paragraph {i}")
    (root / "ignored.md").write_text("not data")
    with open(root / "more.jsonl", "w") as f:
        for i in range(10):
            f.write(json.dumps({"text": f"json line {i}", "id": i}) + "\n")
    pq.write_table(pa.table({"text": [f"parquet row {i}" for i in range(10)]}), root / "rows.parquet")


def test_files_folder_split_is_disjoint_deterministic_and_non_empty(tmp_path):
    root = tmp_path / "data"
    _write_folder(root)
    train, val = list(file_documents(root, "train")), list(file_documents(root, "val"))
    assert len(train) + len(val) == 50  # one per .txt, one per jsonl line, one per row
    assert val and train and not set(train) & set(val)
    assert "text file number 3\n\nsecond paragraph 3" in train + val
    assert "json line 4" in train + val and "parquet row 9" in train + val
    assert not any("not data" in d for d in train + val)
    assert list(file_documents(root, "val")) == val
    assert 1 <= len(val) <= 15


def test_files_split_has_a_val_document_even_when_tiny(tmp_path):
    root = tmp_path / "two"
    root.mkdir()
    (root / "a.txt").write_text("alpha")
    (root / "b.txt").write_text("beta")
    val = list(file_documents(root, "val"))
    train = list(file_documents(root, "train"))
    assert len(val) == 1 and len(train) == 1 and set(val + train) == {"alpha", "beta"}


def test_single_text_file_is_split_into_paragraphs(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("\n\n".join(f"Paragraph {i} of the book." for i in range(40)))
    docs = list(file_documents(path, "train")) + list(file_documents(path, "val"))
    assert sorted(docs) == sorted(f"Paragraph {i} of the book." for i in range(40))


def test_files_errors(tmp_path):
    (tmp_path / "one.txt").write_text("only one document")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="at least 2"):
        list(file_documents(tmp_path / "one.txt", "train"))
    with pytest.raises(DataError, match="no .txt"):
        list(file_documents(tmp_path / "empty", "train"))
    (tmp_path / "bad.jsonl").write_text('{"body": "no text"}\n')
    with pytest.raises(DataError, match="text"):
        list(file_documents(tmp_path / "bad.jsonl", "train"))


def test_climbmix_documents_read_train_shards_and_pinned_val(tmp_path):
    for i in (0, 1, sources.CLIMBMIX_VAL_SHARD):
        pq.write_table(pa.table({"text": [f"shard {i} row {j}" for j in range(3)]}),
                       tmp_path / climbmix_shard_name(i))
    assert climbmix_shard_name(6542) == "shard_06542.parquet"
    assert list(climbmix_documents(tmp_path, "train", 1)) == [f"shard 0 row {j}" for j in range(3)]
    assert len(list(climbmix_documents(tmp_path, "train", 2))) == 6
    assert list(climbmix_documents(tmp_path, "val", 2))[0] == "shard 6542 row 0"
    with pytest.raises(DataError, match="missing"):
        list(climbmix_documents(tmp_path, "train", 3))


def test_parquet_without_text_column(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="no `text` column"):
        list(sources.parquet_documents(tmp_path / "x.parquet"))


def test_tokenizer_caps():
    docs = ["a" * 25_000, "b" * 50, "c" * 10]
    out = list(capped_for_tokenizer(docs))
    assert [len(d) for d in out] == [10_000, 50, 10]
    assert [len(d) for d in capped_for_tokenizer(docs, doc_chars=30, total_chars=50)] == [30, 30]
