"""A service locked with uv (pyproject.toml + uv.lock) and no SIGTERM handler of its own."""

import http.server
import os

import six


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(f"six {six.__version__}".encode())


address = (os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"]))
http.server.ThreadingHTTPServer(address, Handler).serve_forever()
