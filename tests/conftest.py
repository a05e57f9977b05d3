"""Shared pytest setup: an offline tiktoken cache for every test."""

from tiktoken_cache import tiktoken_cache  # noqa: F401
