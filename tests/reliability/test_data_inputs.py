"""Bad data files get a clear error naming the file (or split and documents) — never silently
different text — and out-of-range token ids are refused at the data pipeline."""

import ml_collections
import numpy as np
import pytest

from nestlearn.data import load_corpus
from nestlearn.data.dataset import load_dataset
from nestlearn.data.fetch import DataError
from nestlearn.data.iterator import BatchIterator, eval_batches
from nestlearn.data.tokenizer import ByteTokenizer

_LATIN1 = "café".encode("latin-1")  # b"caf\xe9": not UTF-8


def _data(path, tokenizer, seq_len=4):
    return ml_collections.ConfigDict(
        dict(
            corpus="text_dir",
            path=str(path),
            cache_dir="",
            tokenizer=tokenizer,
            seq_len=seq_len,
            val_fraction=0.25,
            test_fraction=0.25,
            split_seed=0,
            synthetic=dict(num_docs=8, doc_words=50),
        )
    )


def _write_docs(path, *, bad_bytes=b""):
    for i in range(4):
        (path / f"d{i}.txt").write_bytes(b"plain text number %d, " % i * 3 + bad_bytes)


def test_the_byte_tokenizer_reads_a_file_that_is_not_utf8_byte_for_byte(tmp_path):
    _write_docs(tmp_path, bad_bytes=_LATIN1)
    docs = load_corpus("text_dir", path=str(tmp_path), invalid_utf8="escape")
    raw = (tmp_path / "d0.txt").read_bytes()
    assert (
        ByteTokenizer().encode(docs["d0"]).tobytes()
        == np.frombuffer(raw, np.uint8).astype(np.int32).tobytes()
    )
    data = load_dataset(_data(tmp_path, "byte"))
    stream = np.concatenate([data.train, data.val, data.test])
    assert 0xE9 in stream and 0xC3 not in stream  # é as its one latin-1 byte, not as "Ã©"


@pytest.mark.parametrize("tokenizer", ["char"])
def test_a_text_tokenizer_refuses_invalid_utf8_naming_file_and_offset(tmp_path, tokenizer):
    _write_docs(tmp_path, bad_bytes=_LATIN1)
    offset = len((tmp_path / "d0.txt").read_bytes()) - 1
    with pytest.raises(DataError, match=rf"d0\.txt: invalid UTF-8 at byte offset {offset} "):
        load_dataset(_data(tmp_path, tokenizer))
    with pytest.raises(DataError, match=r"byte 0xe9.*data.tokenizer='byte'"):
        load_corpus("text_dir", path=str(tmp_path))


def test_a_split_too_short_for_one_window_names_split_and_files(tmp_path):
    _write_docs(tmp_path)
    (tmp_path / "d0.txt").write_bytes(b"")
    (tmp_path / "d3.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"the (val|test) split .* has 0 tokens, fewer than "):
        load_dataset(_data(tmp_path, "byte", seq_len=8))
    with pytest.raises(ValueError, match=r"data.seq_len \+ 1 = 1001: its 2 document\(s\) .*\['d"):
        load_dataset(_data(tmp_path, "byte", seq_len=1000))


@pytest.mark.parametrize("bad", [256, -1])
def test_token_ids_outside_the_vocabulary_are_refused_by_the_batches(bad):
    tokens = np.arange(40) % 200
    tokens[17] = bad
    with pytest.raises(ValueError, match=rf"tokens\[17\] = {bad} is not a token id.*\[0, 256\)"):
        BatchIterator(tokens, batch_size=2, seq_len=4, seed=0, vocab_size=256)
    with pytest.raises(ValueError, match=rf"= {bad} is not a token id"):
        eval_batches(tokens, batch_size=2, seq_len=4, max_batches=1, vocab_size=256)
