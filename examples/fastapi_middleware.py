"""A FastAPI app that relays chat completions to an upstream, metered by UsageMiddleware.

``python fastapi_middleware.py`` serves it on a free port, sends it one streamed request, prints
the usage record and exits; ``uvicorn fastapi_middleware:app`` serves it for good.
Run ``ssetally replay`` first (or set SSETALLY_BASE_URL / OPENAI_API_KEY)."""

import json
import os
import socket
import threading
import time

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from ssetally.asgi import UsageMiddleware

UPSTREAM = os.environ.get("SSETALLY_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
KEY = os.environ.get("OPENAI_API_KEY", "test")

api = FastAPI()
upstream = httpx.AsyncClient(timeout=60, trust_env=False)


@api.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    sent = upstream.build_request(
        "POST", f"{UPSTREAM}/v1/chat/completions", content=await request.body(),
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    answer = await upstream.send(sent, stream=True)
    if not answer.headers.get("content-type", "").startswith("text/event-stream"):
        data = await answer.aread()
        return Response(data, answer.status_code, media_type=answer.headers.get("content-type"))

    async def relay():
        try:
            async for chunk in answer.aiter_raw():
                yield chunk
        finally:
            await answer.aclose()

    return StreamingResponse(relay(), answer.status_code, media_type="text/event-stream")


class PrintSink:
    """Any object with write(record) -> bool will do (e.g. ssetally's JSONL/SQLite sinks)."""

    def __init__(self):
        self.records = []

    def write(self, record):
        self.records.append(record)
        return True


sink = PrintSink()
# include_usage: chat streams are asked for usage; the added chunk is hidden from clients.
app = UsageMiddleware(api, sink=sink, include_usage=True)


def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    body = {"model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "Say hello"}]}
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/chat/completions"
    with httpx.Client(timeout=60, trust_env=False) as client, client.stream(
        "POST", url, json=body
    ) as resp:
        for _ in resp.iter_raw():
            pass
    deadline = time.monotonic() + 10
    while not sink.records and time.monotonic() < deadline:
        time.sleep(0.01)
    server.should_exit = True
    thread.join(10)
    record = sink.records[0]
    print(json.dumps({k: record[k] for k in ("path", "model", "status", "usage_source")}))
    print(f"input={record['usage']['input_tokens']} output={record['usage']['output_tokens']}")


if __name__ == "__main__":
    main()
