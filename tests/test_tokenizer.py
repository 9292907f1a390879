from __future__ import annotations

import numpy as np
import pytest
import regex

from autoresearch.harness.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Café crème brûlée, naïve façade — déjà vu. 日本語のテキスト。" * 3,
    "In 1984 there were 12345 numbers and 42 answers.\n\nNew paragraph here.",
] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, 400)


def test_split_pattern_groups_digits_by_two():
    assert regex.findall(SPLIT_PATTERN, "12345") == ["12", "34", "5"]
    assert regex.findall(SPLIT_PATTERN, "don't stop") == ["don", "'t", " stop"]


def test_specials_follow_learned_tokens_and_first_is_bos(tok):
    assert len(SPECIAL_TOKENS) == 4
    vocab = tok.get_vocab_size()
    assert 256 + 4 < vocab <= 400
    assert tok.get_bos_token_id() == vocab - 4
    # special-token text in a document is plain text, never a special id
    assert tok.get_bos_token_id() not in tok.encode(SPECIAL_TOKENS[0])


def test_vocab_size_is_reached_on_enough_text():
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = [" ".join("".join(rng.choice(letters, 5)) for _ in range(20)) for _ in range(300)]
    assert Tokenizer.train(words, 600).get_vocab_size() == 600


def test_vocab_too_small_is_rejected():
    with pytest.raises(ValueError):
        Tokenizer.train(CORPUS, 100)


def test_round_trip_and_batches(tok):
    text = CORPUS[1]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    batch = tok.encode(CORPUS[:3], prepend=tok.get_bos_token_id(), num_threads=2)
    assert len(batch) == 3
    assert all(row[0] == tok.get_bos_token_id() for row in batch)
    assert batch[1][1:] == ids
    assert tok.encode("abc", prepend=7)[0] == 7


def test_save_load_gives_identical_tokenizer(tok, tmp_path):
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.get_vocab_size() == tok.get_vocab_size()
    assert again.encode(CORPUS[:3]) == tok.encode(CORPUS[:3])
    assert np.array_equal(again.token_byte_lengths(), tok.token_byte_lengths())


def test_token_byte_lengths_are_true_bytes(tok):
    lengths = tok.token_byte_lengths()
    assert lengths.dtype == np.int32 and lengths.shape == (tok.get_vocab_size(),)
    assert (lengths[-4:] == 0).all()
    # the lone byte 0xC3 (first half of 'é') decodes to U+FFFD, 3 bytes when re-encoded;
    # its true length is 1
    assert tok.decode([0xC3]) == "\ufffd"
    assert lengths[0xC3] == 1
    for text in CORPUS[:3]:
        ids = tok.encode(text)
        assert lengths[ids].sum() == len(text.encode("utf-8"))
    assert all(lengths[i] == len(tok.token_bytes(i)) for i in range(tok.get_vocab_size()))
