"""A bare WSGI app for the Lambda handler tests: echoes method, path, query, cookies, body."""

import hashlib
import json


def application(environ, start_response):  # type: ignore[no-untyped-def]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    answer = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ.get("QUERY_STRING", ""),
        "cookie": environ.get("HTTP_COOKIE", ""),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_len": len(body),
    }
    status = "201 Created" if environ["REQUEST_METHOD"] == "POST" else "200 OK"
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("X-App", "wsgi"),
            ("Set-Cookie", "session=abc; Path=/"),
            ("Set-Cookie", "theme=dark; Path=/"),
        ],
    )
    return [json.dumps(answer).encode()]
