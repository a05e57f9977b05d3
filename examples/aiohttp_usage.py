"""Stream a chat answer with aiohttp and print what it cost.

Run ``ssetally replay`` first (or set SSETALLY_BASE_URL to an OpenAI-compatible server and
OPENAI_API_KEY to its key)."""

import asyncio
import os

import aiohttp
from ssetally.aiohttp import aconnect_usage

BASE_URL = os.environ.get("SSETALLY_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("OPENAI_API_KEY", "test")


async def main() -> None:
    body = {"model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "Say hello"}]}
    headers = {"Authorization": f"Bearer {KEY}"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session, aconnect_usage(
        session, "POST", f"{BASE_URL}/v1/chat/completions", json=body, headers=headers
    ) as stream:
        async for event in stream:
            pass  # event.data: each chunk, as it arrives
    report = stream.report
    usage = report.usage
    print(f"status={report.status} input={usage.input_tokens} "
          f"output={usage.output_tokens} source={usage.source}")


if __name__ == "__main__":
    asyncio.run(main())
