"""A bare ASGI app for bench/service.py's load-generator floor: it reads each request's
body and answers 200 with a small fixed JSON body, nothing else. Served by the same
uvicorn (uvloop, httptools) as `embquant serve`, and driven by the same wrk command,
it shows what the load generator and the HTTP server alone cost on this machine:
latencies no service on it can beat.

    .venv/bin/python -m uvicorn bare_asgi:app --app-dir bench --port 8199 \\
        --loop uvloop --http httptools --log-level warning --no-access-log
"""

ANSWER = b'{"codes":[[1,2,3,4]],"side":null,"shape":[1,384]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":  # lifespan: nothing to start
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    while True:
        msg = await receive()
        if msg["type"] != "http.request" or not msg.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
