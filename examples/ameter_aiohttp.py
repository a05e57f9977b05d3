"""Meter the raw bytes of an aiohttp response with ``ssetally.ameter``.

Run ``ssetally replay`` first (or set SSETALLY_BASE_URL / OPENAI_API_KEY)."""

import asyncio
import os

import aiohttp
import ssetally

BASE_URL = os.environ.get("SSETALLY_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("OPENAI_API_KEY", "test")


async def main() -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Say hello"}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    size = 0
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
        f"{BASE_URL}/v1/chat/completions", json=body, headers=headers
    ) as resp, ssetally.ameter(resp.content.iter_any(), request=body) as chunks:
        async for chunk in chunks:  # the very bytes objects aiohttp produced
            size += len(chunk)
    usage = chunks.report.usage
    print(f"bytes={size} input={usage.input_tokens} output={usage.output_tokens} "
          f"source={usage.source}")


if __name__ == "__main__":
    asyncio.run(main())
