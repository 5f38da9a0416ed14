"""A bare ASGI app for the Lambda handler tests: echoes requests, counts lifespan startups.

Every startup appends a line to $LIFESPAN_LOG, so a test can count them across invocations.
"""

import hashlib
import json
import os

state = {"startups": 0}


def note_startup() -> None:
    state["startups"] += 1
    with open(os.environ["LIFESPAN_LOG"], "a") as log:
        log.write("startup\n")


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                note_startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    answer = {
        "method": scope["method"],
        "path": scope["path"],
        "query": scope["query_string"].decode(),
        "cookie": headers.get("cookie", ""),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_len": len(body),
        "startups": state["startups"],
    }
    await send(
        {
            "type": "http.response.start",
            "status": 201 if scope["method"] == "POST" else 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"x-app", b"asgi"),
                (b"set-cookie", b"session=abc; Path=/"),
                (b"set-cookie", b"theme=dark; Path=/"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
