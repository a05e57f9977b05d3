"""The salt of API-key fingerprints: given (``--key-salt``), or random, made once per sink and
kept beside it, so fingerprints stay comparable across restarts but are never plain
``sha256(key)`` (which anyone holding a key could match against the records)."""

from __future__ import annotations

import logging
import os
import secrets

logger = logging.getLogger("ssetally.proxy")

_SALT_BYTES = 32


def salt_path(sink: object) -> str | None:
    """Where the salt of a file sink is kept (``PATH.salt``), None for other sinks."""
    path = getattr(sink, "path", None)
    return f"{path}.salt" if isinstance(path, str) and path else None


def key_salt(given: str, sink: object) -> str:
    """``given`` when set; else the sink's salt file's content, created on first use (mode
    0600); else (a sink with no file) a random salt for this process, with a warning."""
    if given:
        return given
    path = salt_path(sink)
    if path is None:
        logger.warning(
            "ssetally proxy: no --key-salt and the sink has no file to keep one: key "
            "fingerprints use a random salt and will differ after a restart"
        )
        return secrets.token_hex(_SALT_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, encoding="ascii") as f:
            salt = f.read().strip()
        if len(salt) < 16:
            raise ValueError(f"the key salt file {path} is empty or too short") from None
        return salt
    salt = secrets.token_hex(_SALT_BYTES)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(salt + "\n")
    return salt
