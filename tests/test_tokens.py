from __future__ import annotations

import numpy as np
import pytest

from autoresearch.harness.tokens import TokenFile, TokenWriter, offsets_path, token_path

DOCS = [[0, 5, 6, 7], [0, 65535], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]


def test_round_trip(tmp_path):
    prefix = tmp_path / "train"
    with TokenWriter(prefix) as w:
        w.append(DOCS[0])
        w.extend(np.array(d) for d in DOCS[1:])
        assert w.num_docs == 3 and w.num_tokens == 16
    tf = TokenFile(prefix)
    assert len(tf) == 3
    assert tf.num_tokens == 16
    assert tf.lengths.tolist() == [4, 2, 10]
    assert tf.offsets.dtype == np.int64 and tf.offsets.tolist() == [0, 4, 6, 16]
    for i, doc in enumerate(DOCS):
        assert tf.doc(i).tolist() == doc
        assert tf.doc(i).dtype == np.uint16
    assert tf.doc(-1).tolist() == DOCS[-1]
    with pytest.raises(IndexError):
        tf.doc(3)
    assert token_path(prefix).stat().st_size == 16 * 2


def test_nothing_visible_until_closed(tmp_path):
    prefix = tmp_path / "val"
    w = TokenWriter(prefix)
    w.append(DOCS[0])
    assert not token_path(prefix).exists() and not offsets_path(prefix).exists()
    with pytest.raises(FileNotFoundError):
        TokenFile(prefix)
    w.close()
    assert len(TokenFile(prefix)) == 1


def test_error_inside_writer_leaves_nothing(tmp_path):
    prefix = tmp_path / "train"
    with pytest.raises(RuntimeError):
        with TokenWriter(prefix) as w:
            w.append(DOCS[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_rejects_ids_that_do_not_fit_uint16(tmp_path):
    with TokenWriter(tmp_path / "t") as w:
        with pytest.raises(ValueError):
            w.append([0, 65536])
        with pytest.raises(ValueError):
            w.append([])


def test_mismatched_files_are_detected(tmp_path):
    prefix = tmp_path / "t"
    with TokenWriter(prefix) as w:
        w.append(DOCS[2])
    with open(token_path(prefix), "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ValueError):
        TokenFile(prefix)


def test_empty_split_reads(tmp_path):
    TokenWriter(tmp_path / "e").close()
    tf = TokenFile(tmp_path / "e")
    assert len(tf) == 0 and tf.num_tokens == 0
