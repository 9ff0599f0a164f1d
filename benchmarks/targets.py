"""Tiny HTTP targets for checking the load tester itself (not models): a trivial endpoint, one that
fails on purpose in a fixed cycle, and one that stalls for a second. Raw ASGI on uvicorn, so the
target costs as little as possible. Run: python benchmarks/targets.py {trivial|errors|stall} --port N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

ERROR_CYCLE = (200, 400, 500, 503)
STALL_AT_S, STALL_FOR_S = 1.0, 1.0


def make_app(mode: str):
    state = {"count": 0, "first": None, "stalled": False}
    lock = asyncio.Lock()

    async def respond(send, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/count":
            return await respond(send, 200, {"count": state["count"]})
        if scope["path"] in ("/readyz", "/metrics"):
            return await respond(send, 200 if scope["path"] == "/readyz" else 404, {})
        n = state["count"]
        state["count"] += 1
        if mode == "errors":
            status = ERROR_CYCLE[n % len(ERROR_CYCLE)]
            return await respond(
                send, status, {"n": n} if status == 200 else {"error": f"request {n} fails on purpose"}
            )
        if mode == "stall":
            # one request at a time; the first request after STALL_AT_S holds the line for STALL_FOR_S
            async with lock:
                now = time.monotonic()
                state["first"] = state["first"] or now
                if not state["stalled"] and now - state["first"] >= STALL_AT_S:
                    state["stalled"] = True
                    await asyncio.sleep(STALL_FOR_S)
        return await respond(send, 200, {"n": n})

    return app


if __name__ == "__main__":
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("mode", choices=["trivial", "errors", "stall"])
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(make_app(args.mode), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
