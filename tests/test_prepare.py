from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from autoresearch.harness import prepare as prep
from autoresearch.harness.prepare import FORMAT_VERSION, dataset_id, load_prepared, prepare
from autoresearch.harness.sources import CLIMBMIX_VAL_SHARD, DataError, builtin_documents, climbmix_shard_name


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def builtin_512(tmp_path_factory):
    # prepared once for the module: several tests read the same data
    cache = tmp_path_factory.mktemp("shared") / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(cache))
        started = time.monotonic()
        data = prepare("builtin", 512, progress=False, workers=2)
        seconds = time.monotonic() - started
        yield data, seconds, cache


def test_builtin_prepares_quickly_with_the_documented_layout(builtin_512):
    data, seconds, cache = builtin_512
    assert seconds < 20
    assert data.root == cache / "datasets" / "builtin" / f"v512-f{FORMAT_VERSION}"
    for name in ("tokenizer.json", "train.tokens", "train.offsets.npy", "val.tokens", "val.offsets.npy", "DONE"):
        assert (data.root / name).is_file(), name
    assert not [p for p in data.root.parent.iterdir() if p.name.startswith(".")]  # no temp left
    info = data.info()
    assert info["splits"]["train"]["docs"] == 4486 and info["splits"]["val"]["docs"] == 479


def test_token_files_hold_the_documents_with_bos(builtin_512):
    data, _, _ = builtin_512
    tok = data.tokenizer()
    assert tok is data.tokenizer()  # cached
    assert tok.get_vocab_size() == 512
    val = data.split("val")
    assert len(val) == 479
    bos = tok.get_bos_token_id()
    assert all(val.doc(i)[0] == bos for i in range(len(val)))
    texts = list(builtin_documents("val"))
    for i in (0, 57, 117):
        assert tok.decode(val.doc(i)[1:]) == texts[i]
    with pytest.raises(DataError):
        data.split("test")


def test_token_bytes_match_the_tokenizer(builtin_512):
    data, _, _ = builtin_512
    tb = data.token_bytes()
    assert tb.dtype == torch.int32 and tb.shape == (512,)
    assert np.array_equal(tb.numpy(), data.tokenizer().token_byte_lengths())
    doc = data.split("val").doc(3)
    assert int(tb[torch.from_numpy(doc.astype(np.int64))].sum()) == len(list(builtin_documents("val"))[3].encode())


def test_second_prepare_returns_at_once(builtin_512):
    data, _, _ = builtin_512
    stamp = (data.root / "train.tokens").stat().st_mtime_ns
    started = time.monotonic()
    again = prepare("builtin", 512, progress=False)
    assert time.monotonic() - started < 0.5
    assert again == data and (data.root / "train.tokens").stat().st_mtime_ns == stamp
    assert load_prepared("builtin", 512) == data


def test_load_prepared_names_the_command_when_missing(cache):
    with pytest.raises(DataError, match=r"autoresearch prepare --data builtin --profile cpu"):
        load_prepared("builtin", 4096)
    with pytest.raises(DataError, match=r"autoresearch prepare --data climbmix"):
        load_prepared("climbmix", 1000)


def test_dataset_ids(tmp_path):
    assert dataset_id("builtin") == "builtin" and dataset_id("climbmix") == "climbmix"
    ident = dataset_id(str(tmp_path))
    assert ident.startswith("files-") and len(ident) == 14
    assert dataset_id(f"files:{tmp_path}") == ident
    assert dataset_id(str(tmp_path / "..")) != ident
    with pytest.raises(DataError, match="valid sources"):
        dataset_id("nonsense")


def test_files_source(cache, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(40):
        (folder / f"{i}.txt").write_text(f"Story {i}: the cat sat on mat number {i}. " * 5)
    data = prepare(str(folder), 300, progress=False, workers=1)
    assert data.root.parent.name == dataset_id(str(folder))
    assert len(data.split("train")) + len(data.split("val")) == 40


def test_climbmix_source_downloads_then_prepares(cache, tmp_path, monkeypatch):
    # a local stand-in for the download, so this test needs no network
    calls = []

    def fake_download(dest, n, **kw):
        calls.append((dest, n, kw["base_url"]))
        dest.mkdir(parents=True, exist_ok=True)
        for i in [*range(n), CLIMBMIX_VAL_SHARD]:
            rows = [f"Shard {i} document {j} about trains and rain." * 3 for j in range(30)]
            pq.write_table(pa.table({"text": rows}), dest / climbmix_shard_name(i))

    monkeypatch.setattr("autoresearch.harness.download.download_shards", fake_download)
    data = prepare("climbmix", 300, base_url="http://mirror", num_train_shards=2, progress=False)
    assert calls == [(cache / "datasets" / "climbmix" / "raw", 2, "http://mirror")]
    assert len(data.split("train")) == 60 and len(data.split("val")) == 30
    assert data.info()["num_train_shards"] == 2


def test_failed_prepare_leaves_nothing_that_looks_ready(cache, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(prep, "_tokenise", broken)
    monkeypatch.setattr(prep, "capped_for_tokenizer", lambda docs: ["a small corpus"] * 5)
    with pytest.raises(RuntimeError):
        prepare("builtin", 300, progress=False)
    assert not (cache / "datasets" / "builtin" / "v300").exists()
    assert list((cache / "datasets" / "builtin").iterdir()) == []


def test_bad_vocab_size(cache):
    with pytest.raises(DataError):
        prepare("builtin", 70000, progress=False)


# --- integrity: the manifest in DONE and verify_prepared ------------------------------------------
import hashlib
import json
import os
import shutil

from autoresearch.harness.prepare import DONE_FILE, PreparedData, verify_prepared


def test_done_records_the_hash_and_size_of_every_file(builtin_512):
    data, _, _ = builtin_512
    files = data.info()["files"]
    assert sorted(files) == sorted(p.name for p in data.root.iterdir() if p.name != DONE_FILE)
    token_file = data.root / "train.tokens"
    assert files["train.tokens"] == {"sha256": hashlib.sha256(token_file.read_bytes()).hexdigest(),
                                     "size": token_file.stat().st_size}


@pytest.fixture
def small_files(cache, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(20):
        (folder / f"{i}.txt").write_text(f"Note {i}: the dog ran to the park number {i}. " * 4)
    return str(folder)


def _flip_a_byte_keeping_size_and_mtime(path):
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back; ctime cannot be


def test_a_tampered_token_file_is_caught_and_a_rebuild_restores_it(small_files, monkeypatch):
    data = prepare(small_files, 300, progress=False, workers=1)
    assert verify_prepared(data) == []
    hashed = []
    real = prep._sha256_file
    monkeypatch.setattr(prep, "_sha256_file", lambda p: hashed.append(p.name) or real(p))
    assert verify_prepared(data) == [] and hashed == []  # repeat calls only stat the files

    _flip_a_byte_keeping_size_and_mtime(data.root / "val.tokens")
    problems = verify_prepared(data)
    assert hashed == ["val.tokens"]
    assert len(problems) == 1 and "val.tokens has changed" in problems[0] and "autoresearch prepare" in problems[0]

    shutil.rmtree(data.root)  # what the message tells the user to do
    again = prepare(small_files, 300, progress=False, workers=1)
    prep._PINNED.pop(again.root, None)  # a fresh process would not know the old manifest
    assert verify_prepared(again) == []


def test_rewriting_the_manifest_too_is_caught_by_the_pinned_copy(small_files):
    data = prepare(small_files, 300, progress=False, workers=1)
    assert verify_prepared(data) == []
    (data.root / "train.tokens").write_bytes(b"\0\1" * 50)
    info = data.info()
    info["files"]["train.tokens"] = {"sha256": hashlib.sha256(b"\0\1" * 50).hexdigest(), "size": 100}
    (data.root / DONE_FILE).write_text(json.dumps(info))
    (data.root / "extra.py").write_text("planted")
    problems = " | ".join(verify_prepared(data))
    assert "recorded file hashes changed" in problems and "train.tokens has 100 bytes" in problems
    assert "extra.py was added" in problems


def test_data_from_an_older_version_says_to_prepare_again(small_files):
    data = prepare(small_files, 300, progress=False, workers=1)
    info = data.info()
    del info["files"]
    (data.root / DONE_FILE).write_text(json.dumps(info))
    assert load_prepared(small_files, 300) == data  # still loads: checking is separate and optional
    problems = verify_prepared(PreparedData(data.root, 300))
    assert len(problems) == 1 and "older autoresearch" in problems[0]
    assert f"autoresearch prepare --data {small_files}" in problems[0]
    rebuilt = prepare(small_files, 300, progress=False, workers=1)  # as the message says
    prep._PINNED.pop(rebuilt.root, None)
    assert "files" in rebuilt.info() and verify_prepared(rebuilt) == []
    assert [p.name for p in rebuilt.root.parent.iterdir()] == [rebuilt.root.name]  # nothing left aside
