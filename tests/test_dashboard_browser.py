"""The web dashboard in headless Chromium (Debian's, driven by Playwright) on a real daemon."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .views import (
    chromium,
    corral,
    detached_stack,
    proxy_address,
    ps,
    require,
    require_browser,
    screenshot_path,
    traffic,
    wait_for,
    want_screenshots,
)

pytestmark = [pytest.mark.views, pytest.mark.timeout(240)]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(project, dashboard URL with its token) of a running detached daemon."""
    require_browser()
    with detached_stack(tmp_path) as project:
        yield project, corral(project, "dashboard", "--url").strip()


def test_missing_tools_skip_locally_and_fail_where_ci_requires_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CORRAL_REQUIRE", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium"):
        require("browser", "no Chromium at /usr/bin/chromium")
    monkeypatch.setenv("CORRAL_REQUIRE", "tmux,browser")
    with pytest.raises(pytest.fail.Exception, match="CORRAL_REQUIRE has 'browser'"):
        require("browser", "no Chromium at /usr/bin/chromium")
    require("browser", None)  # present: nothing happens


def _pids(page: Any, service: str) -> dict[str, str]:
    """Instance → pid as the page shows them (current instances, not draining ones)."""
    rows = page.locator(f'article[data-service="{service}"] tbody tr:not(.retiring)')
    return {
        rows.nth(i).get_attribute("data-instance"): rows.nth(i).get_attribute("data-pid")
        for i in range(rows.count())
    }


def _console(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def test_the_dashboard_lists_updates_and_rolls(stack: tuple[Path, str], tmp_path: Path) -> None:
    project, url = stack
    with traffic(proxy_address(project)), chromium() as browser:
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        errors = _console(page)
        page.goto(url)
        assert "#token=" not in page.url  # off the address bar once read

        # Lists every instance, with the pids the CLI sees.
        rows = ps(project)
        for r in rows:
            page.locator(f'tr[data-instance="{r["name"]}"][data-pid="{r["pid"]}"]').wait_for(
                timeout=10_000
            )
        assert page.locator("#conn").get_attribute("data-state") == "live"
        assert page.locator('tr[data-instance="api.1"] .state').inner_text().endswith("ready")
        page.locator("#log").get_by_text("listening on").first.wait_for(timeout=10_000)

        # kill -9 one instance: the page shows it within 2 s (pushed, not on the next poll).
        victim = next(r for r in rows if r["name"] == "web.1")
        os.kill(victim["pid"], signal.SIGKILL)
        page.wait_for_function(
            f"() => !document.querySelector('tr[data-pid=\"{victim['pid']}\"]')", timeout=2_000
        )
        wait_for(
            lambda: next(r for r in ps(project) if r["name"] == "web.1")["restarts"] == 1,
            20,
            "web.1 restarted by the daemon",
        )
        page.locator('tr[data-instance="web.1"] .state[data-state="ready"]').wait_for(
            timeout=20_000
        )

        # Restart rolls the service: every api instance replaced, one at a time.
        before = _pids(page, "api")
        assert len(before) == 3
        page.locator('article[data-service="api"] button[data-act="restart"]').first.click()
        wait_for(
            lambda: all(
                str(r["pid"]) not in before.values() and r["state"] == "ready"
                for r in ps(project)
                if r["service"] == "api"
            ),
            60,
            "every api instance replaced",
        )
        page.wait_for_function(
            "old => [...document.querySelectorAll("
            "'article[data-service=\"api\"] tbody tr:not(.retiring)')]"
            ".every(tr => tr.dataset.state === 'ready' && !old.includes(tr.dataset.pid))",
            arg=list(before.values()),
            timeout=20_000,
        )
        page.get_by_text("restart api done").wait_for(timeout=10_000)
        assert "restarting" in page.locator("#events").inner_text()

        # + scales (the same POST /v1/scale as `corral scale web=3`).
        page.locator('article[data-service="web"] button[data-act="scale-up"]').click()
        wait_for(lambda: len([r for r in ps(project) if r["service"] == "web"]) == 3, 30, "web=3")
        page.locator('tr[data-instance="web.3"] .state[data-state="ready"]').wait_for(
            timeout=20_000
        )

        # Stop asks for a second click; the first alone changes nothing.
        stop = page.locator('article[data-service="worker"] button[data-act="stop"]')
        stop.click()
        assert stop.inner_text() == "Confirm stop"
        assert next(r for r in ps(project) if r["name"] == "worker.1")["state"] == "running"
        stop.click()
        page.locator('tr[data-instance="worker.1"] .state[data-state="stopped"]').wait_for(
            timeout=20_000
        )
        page.locator('article[data-service="worker"] button[data-act="start"]').click()
        page.locator('tr[data-instance="worker.1"] .state[data-state="running"]').wait_for(
            timeout=20_000
        )

        if want_screenshots():
            time.sleep(45)  # a fuller minute of sparklines for the docs (not a wait for state)
        else:
            page.wait_for_function(
                "() => document.querySelector('.spark.rps path.line')", timeout=10_000
            )
        path = screenshot_path(tmp_path, "dashboard.png")
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 50_000
        assert errors == []


def test_without_the_token_nothing_is_shown_or_done(stack: tuple[Path, str]) -> None:
    project, url = stack
    base = url.partition("#")[0]
    pids = sorted(r["pid"] for r in ps(project))
    with chromium() as browser:
        page = browser.new_page()
        errors = _console(page)
        page.goto(base)
        page.locator("#banner").get_by_text("corral dashboard --url").wait_for(timeout=10_000)
        assert page.locator("#conn").get_attribute("data-state") == "auth"
        assert page.locator("tr[data-instance]").count() == 0
        # What a script on the page (or a link to it) could try: refused.
        status = page.evaluate(
            "async () => (await fetch('v1/restart', {method: 'POST', body: '{}'})).status"
        )
        assert status == 401
        assert errors and all("401" in e for e in errors)  # the browser notes the refusals

        page.goto(base + "#token=" + "A" * 43)  # a wrong token
        page.locator("#banner").get_by_text("The token was refused").wait_for(timeout=10_000)

    request = urllib.request.Request(base + "v1/stop", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 401
    assert "corral dashboard --url" in json.loads(info.value.read())["error"]
    assert sorted(r["pid"] for r in ps(project)) == pids
