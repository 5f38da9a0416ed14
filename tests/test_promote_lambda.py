"""The Lambda handler shim, invoked as Lambda invokes it: real API Gateway v2 (HTTP API)
payloads, in one process that lives across invocations like an execution environment.

ASGI apps go through Mangum with the lifespan started once per environment (not once per
invocation, Mangum's own behaviour: its #342); WSGI apps through apig-wsgi."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import yaml

from .promote_support import APPS, promoted

DRIVER = """
import json, os, sys

class Context:  # the attributes of Lambda's context object that adapters read
    function_name = "corral-test"
    function_version = "$LATEST"
    aws_request_id = "c0ffee00-0000-4000-8000-000000000000"
    memory_limit_in_mb = 512
    def get_remaining_time_in_millis(self):
        return 30000

events = json.load(sys.stdin)
import corral_lambda
print(json.dumps([corral_lambda.handler(event, Context()) for event in events]))
"""


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "lam"
    for service, app in (("asgi", "asgi_app.py"), ("wsgi", "wsgi_app.py")):
        (root / service).mkdir(parents=True)
        shutil.copy(APPS / app, root / service / app)
    path = root / "corral.toml"
    path.write_text(
        textwrap.dedent(
            """
            [proxy]

            [services.asgi]
            command = "python -m uvicorn asgi_app:app --port {port}"
            cwd = "asgi"
            port = 9001
            venv = false
            app = "asgi_app:app"
            env = { GREETING = "hello" }
            route = { path = "/api", strip_prefix = true }

            [services.wsgi]
            command = "python wsgi_app.py"
            cwd = "wsgi"
            port = 9101
            venv = false
            app = "wsgi_app:application"
            route = { path = "/legacy", strip_prefix = true }
            """
        )
    )
    return path


def _event(
    method: str,
    path: str,
    query: str = "",
    *,
    body: bytes | None = None,
    cookies: list[str] | None = None,
    content_type: str | None = None,
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload format 2.0) event, as AWS documents it."""
    host = "r3pmxmplak.execute-api.us-east-1.amazonaws.com"
    headers = {
        "accept": "*/*",
        "host": host,
        "user-agent": "curl/8.5.0",
        "x-amzn-trace-id": "Root=1-5e6722a7-cc56xmpl46db7ae02d4da47e",
        "x-forwarded-for": "203.0.113.7",
        "x-forwarded-port": "443",
        "x-forwarded-proto": "https",
    }
    if content_type:
        headers["content-type"] = content_type
    if body is not None:
        headers["content-length"] = str(len(body))
    prefix = "/" + path.strip("/").split("/")[0]
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"ANY {prefix}/{{proxy+}}",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "r3pmxmplak",
            "domainName": host,
            "domainPrefix": "r3pmxmplak",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.5.0",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": f"ANY {prefix}/{{proxy+}}",
            "stage": "$default",
            "time": "01/Dec/2026:08:00:00 +0000",
            "timeEpoch": 1796112000000,
        },
        "pathParameters": {"proxy": path[len(prefix) + 1 :]},
        "isBase64Encoded": body is not None,
    }
    if query:
        event["queryStringParameters"] = dict(p.split("=", 1) for p in query.split("&"))
    if cookies:
        event["cookies"] = cookies
    if body is not None:
        event["body"] = base64.b64encode(body).decode()
    return event


def _invoke(tmp_path: Path, service: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the promoted handler of `service` over `events` in one process (one environment)."""
    out = tmp_path / "out"
    promoted(_project(tmp_path), "lambda", out)
    template = yaml.safe_load((out / "lambda" / "template.yaml").read_text())
    function = template["Resources"][service.capitalize()]["Properties"]
    code = (out / "lambda" / function["CodeUri"]).resolve()
    # Lambda puts the function code and layers (python/ inside) on sys.path; the shim's own
    # requirements (Mangum, apig-wsgi) are installed in this test environment.
    env = {
        **os.environ,
        **function["Environment"]["Variables"],
        "PYTHONPATH": os.pathsep.join([str(code), str(out / "lambda" / "shim")]),
        "LIFESPAN_LOG": str(tmp_path / "lifespan.log"),
    }
    result = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(events),
        capture_output=True,
        text=True,
        env=env,
        cwd=code,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    responses = json.loads(result.stdout)
    assert isinstance(responses, list)
    return responses


def _body(response: dict[str, Any]) -> dict[str, Any]:
    raw = response["body"]
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    data = json.loads(raw)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(("service", "prefix"), [("asgi", "/api"), ("wsgi", "/legacy")])
def test_get_post_and_cookies_reach_the_app_and_come_back(
    tmp_path: Path, service: str, prefix: str
) -> None:
    payload = bytes(range(256)) * 8  # binary: only base64 carries it intact
    responses = _invoke(
        tmp_path,
        service,
        [
            _event("GET", f"{prefix}/items", "q=lasso&limit=2"),
            _event(
                "POST", f"{prefix}/upload", body=payload, content_type="application/octet-stream"
            ),
            _event("GET", f"{prefix}/me", cookies=["session=abc123", "theme=dark"]),
        ],
    )
    get, post, cookies = responses

    assert get["statusCode"] == 200
    assert get["headers"]["content-type"] == "application/json"
    assert get["headers"]["x-app"] == service
    assert _body(get)["method"] == "GET"
    assert _body(get)["path"] == "/items"  # strip_prefix: the route prefix is gone
    assert _body(get)["query"] == "q=lasso&limit=2"

    assert post["statusCode"] == 201
    assert _body(post)["body_len"] == len(payload)
    assert _body(post)["body_sha256"] == hashlib.sha256(payload).hexdigest()

    # apig-wsgi joins the cookies with ";", Mangum with "; ": both read the same.
    jar = SimpleCookie(_body(cookies)["cookie"])
    assert {name: morsel.value for name, morsel in jar.items()} == {
        "session": "abc123",
        "theme": "dark",
    }
    # HTTP API v2 responses carry Set-Cookie headers in their own "cookies" list.
    assert sorted(cookies["cookies"]) == ["session=abc; Path=/", "theme=dark; Path=/"]


def test_the_asgi_lifespan_starts_once_per_environment(tmp_path: Path) -> None:
    responses = _invoke(tmp_path, "asgi", [_event("GET", f"/api/n{i}") for i in range(5)])

    assert [r["statusCode"] for r in responses] == [200] * 5
    assert [_body(r)["startups"] for r in responses] == [1] * 5
    assert (tmp_path / "lifespan.log").read_text() == "startup\n"


def test_the_template_names_the_app_and_the_routes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    promoted(_project(tmp_path), "lambda", out)
    template = yaml.safe_load((out / "lambda" / "template.yaml").read_text())
    asgi = template["Resources"]["Asgi"]["Properties"]

    assert asgi["Environment"]["Variables"]["CORRAL_APP"] == "asgi_app:app"
    assert asgi["Environment"]["Variables"]["CORRAL_BASE_PATH"] == "/api"
    assert asgi["Environment"]["Variables"]["GREETING"] == "hello"
    assert {e["Properties"]["Path"] for e in asgi["Events"].values()} == {"/api", "/api/{proxy+}"}
    assert asgi["ReservedConcurrentExecutions"] == 1
    assert (out / "lambda" / "shim" / "requirements.txt").read_text().splitlines() == [
        "mangum>=0.17",
        "apig-wsgi>=2.18",
    ]
