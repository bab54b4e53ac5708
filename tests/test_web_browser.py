"""The dashboard in a real browser: Debian's Chromium driven by Playwright
(never Playwright's own browser download). Under CI=true a missing browser
fails the run (`unavailable`), so these always run in CI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, _env, copy_sample, run_cli, serve_on_loopback, unavailable
from dashboard_support import app_for, backfill, cli_json, dashboard_process

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
HOSTILE_TOOL = "<img src=x onerror=window.__pwned=1>"
HOSTILE_MODEL = "<svg onload=window.__pwned=2>"
HOSTILE_THREAD = "thr-0000-73ab4876"


def chromium_path() -> str | None:
    return shutil.which("chromium") or (
        "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        unavailable("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install '.[test]')")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Watched:
    """A page whose errors, console errors and requests are recorded."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.console: list[str] = []
        self.requests: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on(
            "console", lambda m: self.console.append(m.text) if m.type == "error" else None
        )
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("response", self._response)

    def _response(self, response: Any) -> None:
        if response.status >= 400:  # named, so a failure says which request it was
            self.console.append(f"{response.status} {response.url}")

    def open(self, query: str = "") -> Any:
        self.page.goto(f"{self.base}/{query}")
        self.page.wait_for_selector("body[data-loaded]", timeout=15_000)
        return self.page

    def metrics(self) -> dict[str, str]:
        return self.page.eval_on_selector_all(
            "[data-metric]",
            "nodes => Object.fromEntries(nodes.map(n => [n.dataset.metric, n.dataset.value]))",
        )

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.console == [], self.console
        foreign = [u for u in self.requests if not u.startswith(self.base + "/")]
        assert foreign == [], foreign

    def close(self) -> None:
        self.context.close()


def assert_metrics_equal(shown: dict[str, str], summary: dict[str, Any]) -> None:
    assert shown, "no data-metric elements"
    for key, raw in shown.items():
        assert key in summary, f"data-metric {key!r} is not a `stats summary --json` key"
        want = summary[key]
        if isinstance(want, str):
            assert raw == want, key
        else:
            assert json.loads(raw) == want, key
    # every headline key of the contract is on the page
    for key in ("sessionCount", "turnCount", "toolCallCount", "toolErrorCount",
                "totalTokens", "costUsd"):  # fmt: skip
        assert key in shown, key


def _hostile_sample(dest: Path) -> Path:
    data_dir = copy_sample(dest)
    events = data_dir / "threads" / HOSTILE_THREAD / "events.jsonl"
    text = events.read_text()
    assert '"tool_name":"grep"' in text and '"model":"claude-sonnet-4-5"' in text
    text = text.replace('"tool_name":"grep"', json.dumps({"tool_name": HOSTILE_TOOL})[1:-1])
    text = text.replace('"model":"claude-sonnet-4-5"', json.dumps({"model": HOSTILE_MODEL})[1:-1])
    events.write_text(text)
    return data_dir


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("web-hostile")
    data_dir = _hostile_sample(base / "roder-data")
    return data_dir, backfill(data_dir, base / "usage.sqlite3")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("web-sample")
    data_dir = copy_sample(base / "roder-data")
    return data_dir, backfill(data_dir, base / "usage.sqlite3")


def test_headline_equals_the_cli_and_charts_are_drawn(browser, sample):
    data_dir, store = sample
    summary = cli_json(data_dir, store, "summary")
    tools = cli_json(data_dir, store, "tools", "--limit", "1000")
    with serve_on_loopback(app_for(data_dir, store)) as base:
        watched = Watched(browser, base)
        page = watched.open()
        assert_metrics_equal(watched.metrics(), summary)
        # uPlot drew the stacked tokens chart: a canvas with painted pixels
        painted = page.evaluate(
            """() => {
                const canvas = document.querySelector('#tokens-chart canvas');
                if (!canvas) return 0;
                const data = canvas.getContext('2d').getImageData(0, 0, canvas.width,
                    canvas.height).data;
                let n = 0;
                for (let i = 3; i < data.length; i += 4) if (data[i]) n++;
                return n;
            }"""
        )
        assert painted > 5000, painted
        assert page.locator("#tokens-chart .u-legend").count() == 1
        assert page.locator("#heatmap .hm-cell").count() == 7 * 24
        assert page.locator("#heatmap .hm-cell:not(.zero)").count() > 0
        assert page.locator("#tools-table tbody tr").count() == len(tools)
        assert page.locator("#tools-table .lat-bar").count() == sum(
            1 for t in tools if t["p99DurationMs"] is not None
        )
        assert page.locator("#mix .mix-row:not(.mix-head)").count() > 0
        assert page.locator("#act-execution-kind .bar-row").count() > 0
        assert page.locator("#status dd").count() > 3
        for group in ("week", "month"):
            page.click(f'.seg[data-control="group"] button[data-value="{group}"]')
            page.wait_for_function(f"() => location.search.includes('group={group}')")
            page.wait_for_selector("#tokens-chart canvas")
        watched.assert_clean()
        watched.close()


def test_a_filter_in_the_url_gives_what_the_cli_gives(browser, sample):
    data_dir, store = sample
    models = cli_json(data_dir, store, "tokens", "--group", "model")
    flags = {"since": "2026-10-25", "until": "2026-11-12", "timezone": "Asia/Tokyo",
             "model": models[0]["group"]}  # fmt: skip
    cli_flags = [x for k, v in flags.items() for x in (f"--{k}", v)]
    summary = cli_json(data_dir, store, "summary", *cli_flags)
    everything = cli_json(data_dir, store, "summary")
    assert summary["turnCount"] != everything["turnCount"], "the filter must change the numbers"
    with serve_on_loopback(app_for(data_dir, store)) as base:
        watched = Watched(browser, base)
        page = watched.open("?" + "&".join(f"{k}={v}" for k, v in flags.items()))
        assert_metrics_equal(watched.metrics(), summary)
        assert page.input_value('input[name="since"]') == flags["since"]
        assert page.input_value('select[name="model"]') == flags["model"]
        # changing a filter on the page goes into the URL and changes the numbers
        page.select_option('select[name="model"]', "")
        page.wait_for_function("() => !location.search.includes('model=')")
        page.wait_for_function(
            "want => document.querySelector('[data-metric=turnCount]').dataset.value === want",
            arg=str(cli_json(data_dir, store, "summary", *cli_flags[:6])["turnCount"]),
        )
        watched.assert_clean()
        watched.close()


def test_sorting_and_the_session_drill_down(browser, sample):
    data_dir, store = sample
    with serve_on_loopback(app_for(data_dir, store)) as base:
        watched = Watched(browser, base)
        page = watched.open()
        page.click('#tools-table th[data-key="p95DurationMs"]')
        page.wait_for_function("() => location.search.includes('tsort=p95DurationMs')")
        want = [t["toolName"] for t in cli_json(data_dir, store, "tools", "--sort", "p95")]
        shown = page.eval_on_selector_all(
            "#tools-table tbody tr td:first-child", "cells => cells.map(c => c.textContent)"
        )
        assert shown == want
        row = cli_json(data_dir, store, "sessions", "--limit", "1")[0]
        page.click(f'#sessions-table tr[data-thread="{row["threadId"]}"]')
        page.wait_for_selector("#session-dialog[open]")
        page.wait_for_function("() => document.querySelector('#session-turns tbody tr') !== null")
        assert page.locator("#session-turns tbody tr").count() == row["turnCount"]
        assert page.locator("#session-calls tbody tr").count() == row["toolCallCount"]
        assert page.locator("#session-chart canvas").count() >= 1
        assert f"session={row['threadId']}" in page.url
        page.click("#session-close")
        page.wait_for_function("() => !location.search.includes('session=')")
        watched.assert_clean()
        watched.close()


def test_names_from_the_logs_are_text_and_never_run(browser, hostile):
    data_dir, store = hostile
    with serve_on_loopback(app_for(data_dir, store)) as base:
        watched = Watched(browser, base)
        page = watched.open()
        cells = page.eval_on_selector_all(
            "#tools-table tbody td:first-child", "cells => cells.map(c => c.textContent)"
        )
        assert HOSTILE_TOOL in cells
        options = page.eval_on_selector_all(
            'select[name="model"] option', "nodes => nodes.map(n => n.textContent)"
        )
        assert HOSTILE_MODEL in options
        page.click(f'#sessions-table tr[data-thread="{HOSTILE_THREAD}"]')
        page.wait_for_function("() => document.querySelector('#session-calls tbody tr') !== null")
        calls = page.eval_on_selector_all(
            "#session-calls tbody td:nth-child(2)", "cells => cells.map(c => c.textContent)"
        )
        assert HOSTILE_TOOL in calls
        page.wait_for_timeout(300)
        assert page.evaluate("window.__pwned") is None
        assert page.locator("main img, dialog img, main svg:not(.logo), dialog svg").count() == 0
        watched.assert_clean()
        watched.close()


def test_token_mode_rejects_a_request_without_the_token(browser, sample):
    data_dir, store = sample
    token = "dash-token-93f1"
    with serve_on_loopback(app_for(data_dir, store, token=token)) as base:
        watched = Watched(browser, base)
        refused = watched.page.goto(f"{base}/")
        assert refused is not None and refused.status == 401
        api = watched.page.request.get(f"{base}/api/summary")
        assert api.status == 401
        page = watched.open(f"?token={token}&since=2026-10-25")
        assert "token=" not in page.url and "since=2026-10-25" in page.url
        assert_metrics_equal(
            watched.metrics(), cli_json(data_dir, store, "summary", "--since", "2026-10-25")
        )
        assert "dash" not in page.evaluate("document.cookie")  # HttpOnly: not for scripts
        watched.errors.clear()
        watched.console.clear()  # the refused first load logged its 401
        watched.close()


# --- live: a turn ingested by a running daemon appears without a reload -------------

DAEMON_CONFIG = """
[analytics.daemon]
flush_interval_ms = 40
rescan_interval_s = 30
rollup_interval_s = 0.5
"""


def _turn_lines(thread: str, turn: str, at_ms: int) -> bytes:
    def ts(ms: int) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"

    started = {"event_id": f"evt-live-{turn}-1", "seq": 90001, "timestamp": ts(at_ms),
               "source": "Core", "kind": "turn.started", "thread_id": thread, "turn_id": turn,
               "event": {"TurnStarted": {"thread_id": thread, "turn_id": turn,
                                         "runtime_profile": "interactive",
                                         "timestamp": ts(at_ms)}}}  # fmt: skip
    usage = {"prompt_tokens": 1200, "completion_tokens": 345, "total_tokens": 1545,
             "cached_prompt_tokens": 0, "cache_creation_prompt_tokens": 0}  # fmt: skip
    done = {"event_id": f"evt-live-{turn}-2", "seq": 90002, "timestamp": ts(at_ms + 900),
            "source": "Core", "kind": "turn.completed", "thread_id": thread, "turn_id": turn,
            "event": {"TurnCompleted": {"thread_id": thread, "turn_id": turn,
                                        "finish_reason": "stop", "timestamp": ts(at_ms + 900),
                                        "usage": usage}}}  # fmt: skip
    return (json.dumps(started) + "\n" + json.dumps(done) + "\n").encode()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_turn_ingested_by_the_daemon_appears_within_2_s(browser, tmp_path):
    data_dir = copy_sample(tmp_path / "roder-data")
    (data_dir / "config.toml").write_text(DAEMON_CONFIG)
    store = tmp_path / "store" / "usage.sqlite3"
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 (closed below)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "roder_analyticsd", "--data-dir", str(data_dir),
         "--store", str(store)],
        stdout=subprocess.DEVNULL, stderr=log, env=_env(), cwd=REPO,
    )  # fmt: skip
    try:

        def caught_up() -> bool:
            proc = run_cli("status", "--json", "--data-dir", data_dir, "--store", store,
                           check=False)  # fmt: skip
            if proc.returncode:
                return False
            status = json.loads(proc.stdout)
            return status["storeExists"] and status["running"] and status["lagLines"] == 0

        _wait(caught_up, 60, "the daemon's catch-up")
        before = cli_json(data_dir, store, "summary")
        with dashboard_process(data_dir, store) as (_, base):
            watched = Watched(browser, base)
            page = watched.open()
            page.wait_for_selector("#live.on", timeout=5000)
            assert_metrics_equal(watched.metrics(), before)
            events = data_dir / "threads" / HOSTILE_THREAD / "events.jsonl"
            with open(events, "ab") as fh:
                fh.write(_turn_lines(HOSTILE_THREAD, "turn-live-1", int(time.time() * 1000)))
            began = time.monotonic()
            page.wait_for_function(
                "want => document.querySelector('[data-metric=turnCount]').dataset.value === want",
                arg=str(before["turnCount"] + 1),
                timeout=2000,
                polling=20,
            )
            elapsed = time.monotonic() - began
            assert elapsed < 2.0, elapsed
            after = cli_json(data_dir, store, "summary")
            assert after["turnCount"] == before["turnCount"] + 1
            assert after["totalTokens"] == before["totalTokens"] + 1545
            page.wait_for_function(
                "want => document.querySelector('[data-metric=totalTokens]').dataset.value"
                " === want",
                arg=str(after["totalTokens"]),
                timeout=2000,
            )
            assert_metrics_equal(watched.metrics(), after)
            watched.assert_clean()
            watched.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(5)
        log.close()
