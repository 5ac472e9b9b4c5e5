import pytest

from replication.tasks.fineweb import tokenization
from replication.tasks.fineweb.tokenization import ByteTokenizer, GPT2Tokenizer, get_tokenizer

SENTENCE = "The quick brown fox jumps over the lazy dog. Naïve café, 東京 — 42!"


def test_gpt2_bpe_gives_gpt2s_ids_for_known_text():
    tokenizer = get_tokenizer("gpt2")
    # ids of GPT-2's published vocabulary: "Hello"=15496, ","=11, " world"=995, "!"=0, " the"=262
    assert tokenizer.encode_batch(["Hello, world!", " the"]) == [[15496, 11, 995, 0], [262]]
    assert tokenizer.n_vocab == 50257 and tokenizer.separator == 50256


def test_gpt2_bpe_round_trips_unicode_text():
    tokenizer = get_tokenizer("gpt2")
    (ids,) = tokenizer.encode_batch([SENTENCE])
    assert tokenizer.decode(ids) == SENTENCE
    assert max(ids) < 50256


def test_end_of_text_written_in_a_document_is_ordinary_text():
    (ids,) = get_tokenizer("gpt2").encode_batch(["a <|endoftext|> b"])
    assert 50256 not in ids  # only the preparation inserts the separator


def test_gpt2_files_with_a_wrong_sha256_are_refused(monkeypatch):
    monkeypatch.setitem(tokenization.GPT2_FILE_SHA256, "vocab.bpe", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256"):
        GPT2Tokenizer()


def test_byte_tokenizer_is_utf8_with_a_separator_after_the_bytes():
    tokenizer = ByteTokenizer()
    (ids,) = tokenizer.encode_batch([SENTENCE])
    assert ids == list(SENTENCE.encode("utf-8")) and max(ids) < 256
    assert tokenizer.separator == 256 and tokenizer.n_vocab == 257
    assert tokenizer.decode([tokenizer.separator, *ids]) == SENTENCE


def test_unknown_tokenizer_names_the_choices():
    with pytest.raises(ValueError, match="gpt2"):
        get_tokenizer("sentencepiece")
