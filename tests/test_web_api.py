"""The dashboard's JSON API: every /api/* equals its `stats … --json` twin
(the CLI in a real subprocess, never hard-coded numbers), bad parameters are
400 with a one-line JSON error, a missing store is the empty state."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from conftest import REPO, _env, copy_sample, run_cli, serve_on_loopback
from dashboard_support import (
    app_for,
    backfill,
    cli_json,
    dashboard_process,
    generated_corpus,
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("web-sample")
    data_dir = copy_sample(base / "roder-data")
    return data_dir, backfill(data_dir, base / "usage.sqlite3")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("web-corpus")
    data_dir = generated_corpus(base / "data", events=20_000)
    return data_dir, backfill(data_dir, base / "usage.sqlite3")


def _flags(params: dict[str, str]) -> list[str]:
    out: list[str] = []
    for name, value in params.items():
        out += [f"--{name}"] if value == "" else [f"--{name}", value]
    return out


# (api path, query parameters, the `stats` sub-command words)
TWINS = [
    ("summary", {}, ["summary"]),
    ("summary", {"since": "2026-10-22", "until": "2026-11-01", "timezone": "Asia/Kolkata"},
     ["summary"]),
    ("tools", {}, ["tools"]),
    ("tools", {"sort": "p95", "limit": "5"}, ["tools"]),
    ("tools", {"sort": "errors", "min-calls": "50"}, ["tools"]),
    ("tokens", {}, ["tokens"]),
    ("tokens", {"group": "week", "timezone": "America/New_York"}, ["tokens"]),
    ("tokens", {"group": "model"}, ["tokens"]),
    ("tokens", {"group": "workspace", "limit": "1000"}, ["tokens"]),
    ("sessions", {}, ["sessions"]),
    ("sessions", {"sort": "cost", "limit": "7"}, ["sessions"]),
    ("unused", {"registered": "shell,never_called,read_file"}, ["unused"]),
    ("rollups", {"scope": "tool"}, ["rollups"]),
    ("activity", {"by": "execution-kind"}, ["activity"]),
    ("activity", {"by": "loop-stage", "user-sessions": ""}, ["activity"]),
    ("fleet/dau", {}, ["fleet", "dau"]),
    ("fleet/modules", {"source": "local"}, ["fleet", "modules"]),
    ("fleet/errors", {}, ["fleet", "errors"]),
    ("fleet/sessions", {"user-sessions": ""}, ["fleet", "sessions"]),
]  # fmt: skip


def _check_twins(data_dir: Path, store: Path, cases) -> None:
    with serve_on_loopback(app_for(data_dir, store)) as base, httpx.Client() as client:
        for path, params, words in cases:
            response = client.get(f"{base}/api/{path}", params=params)
            assert response.status_code == 200, (path, params, response.text)
            want = cli_json(data_dir, store, *words, *_flags(params))
            assert response.json() == want, (path, params)


def test_every_endpoint_equals_its_cli_twin_on_the_sample(sample):
    _check_twins(*sample, TWINS)


def test_filters_give_what_the_cli_gives(sample):
    data_dir, store = sample
    sessions = cli_json(data_dir, store, "sessions", "--limit", "3")
    tools = cli_json(data_dir, store, "tools", "--limit", "1")
    models = cli_json(data_dir, store, "tokens", "--group", "model")
    first = sessions[0]
    cases = [
        ("summary", {"thread": first["threadId"]}, ["summary"]),
        ("summary", {"workspace": first["workspaceLabel"]}, ["summary"]),
        ("summary", {"tool": tools[0]["toolName"]}, ["summary"]),
        ("tools", {"model": models[0]["group"]}, ["tools"]),
        ("tokens", {"provider": first["provider"], "group": "day"}, ["tokens"]),
        ("sessions", {"model": models[1]["group"], "sort": "tokens"}, ["sessions"]),
    ]
    _check_twins(data_dir, store, cases)


def test_every_endpoint_equals_its_cli_twin_on_a_generated_corpus(corpus):
    picked = [c for c in TWINS if c[0] in ("summary", "tools", "tokens", "sessions")]
    picked += [("activity", {"by": "module"}, ["activity"]), ("fleet/dau", {}, ["fleet", "dau"])]
    _check_twins(*corpus, picked)


def test_stacked_tokens_add_up_to_the_day_and_model_groups(corpus):
    data_dir, store = corpus
    with serve_on_loopback(app_for(data_dir, store)) as base:
        stack = httpx.get(f"{base}/api/tokens/stack", params={"limit": 1000}).json()
        by_day = httpx.get(f"{base}/api/tokens", params={"group": "day", "limit": 1000}).json()
        by_model = httpx.get(f"{base}/api/tokens", params={"group": "model"}).json()
    keys = ("promptTokens", "completionTokens", "totalTokens", "cachedPromptTokens",
            "cacheCreationPromptTokens", "turnCount")  # fmt: skip
    for grouped, field in ((by_day, "group"), (by_model, "key")):
        sums: dict[str, dict[str, int]] = {}
        for row in stack:
            acc = sums.setdefault(row[field], dict.fromkeys(keys, 0))
            for k in keys:
                acc[k] += row[k]
        assert {r["group"]: {k: r[k] for k in keys} for r in grouped} == sums
    assert [r["group"] for r in stack] == sorted(r["group"] for r in stack)


def test_weekday_hours_count_every_turn_and_call_in_the_zone(sample):
    data_dir, store = sample
    summary = cli_json(data_dir, store, "summary")
    with serve_on_loopback(app_for(data_dir, store)) as base:
        for tz in ("UTC", "Asia/Kathmandu", "America/St_Johns"):
            cells = httpx.get(f"{base}/api/hours", params={"timezone": tz}).json()
            assert sum(c["toolCalls"] for c in cells) == summary["toolCallCount"]
            assert sum(c["turns"] for c in cells) == summary["turnCount"]
            assert all(1 <= c["weekday"] <= 7 and 0 <= c["hour"] <= 23 for c in cells)
    # the cells move with the zone: +05:45 against UTC, per turn, from the store
    conn = sqlite3.connect(store)
    instants = [r[0] for r in conn.execute(
        "SELECT coalesce(started_at_ms, completed_at_ms, model_at_ms) FROM turns")]  # fmt: skip
    conn.close()
    want: dict[tuple[int, int], int] = {}
    for at in instants:
        local = at + (5 * 60 + 45) * 60_000
        days, rest = divmod(local, 86_400_000)
        key = ((days + 3) % 7 + 1, rest // 3_600_000)
        want[key] = want.get(key, 0) + 1
    got = {(c["weekday"], c["hour"]): c["turns"] for c in cells_kathmandu(sample) if c["turns"]}
    assert got == want


def cells_kathmandu(sample):
    with serve_on_loopback(app_for(*sample)) as base:
        return httpx.get(f"{base}/api/hours", params={"timezone": "Asia/Kathmandu"}).json()


def test_session_drill_down_matches_its_sessions_row(sample):
    data_dir, store = sample
    row = cli_json(data_dir, store, "sessions", "--sort", "calls", "--limit", "1")[0]
    with serve_on_loopback(app_for(data_dir, store)) as base:
        detail = httpx.get(
            f"{base}/api/session", params={"thread": row["threadId"], "limit": 1000}
        ).json()
    assert detail["session"] == row
    assert len(detail["turns"]) == row["turnCount"]
    assert len(detail["toolCalls"]) == row["toolCallCount"]
    assert sum(t["totalTokens"] for t in detail["turns"]) == row["totalTokens"]
    assert sum(c["status"] == "error" for c in detail["toolCalls"]) == row["toolErrorCount"]
    assert sum(c["durationMs"] or 0 for c in detail["toolCalls"]) == row["totalToolDurationMs"]
    if row["costUsd"] is not None:
        micro = sum(round(t["costUsd"] * 1e6) for t in detail["turns"] if t["costUsd"])
        assert micro == round(row["costUsd"] * 1e6)


BAD = [
    ("tools", {"limit": "5000"}),
    ("tools", {"limit": "0"}),
    ("tools", {"limit": "many"}),
    ("summary", {"since": "yesterday"}),
    ("summary", {"since": "2026-10-21", "until": "2026-10-20"}),
    ("tokens", {"timezone": "Mars/Olympus"}),
    ("tokens", {"group": "planet"}),
    ("tools", {"sort": "fastest"}),
    ("sessions", {"colour": "red"}),
    ("rollups", {"timezone": "Europe/Berlin"}),
    ("rollups", {"thread": "x"}),
    ("activity", {}),
    ("activity", {"by": "module", "model": "m"}),
    ("fleet/dau", {"tool": "shell"}),
    ("fleet/dau", {"source": "mars"}),
    ("unused", {"registered": ","}),
]


def _cli_words(path: str) -> list[str]:
    return path.split("/")


def test_bad_parameters_are_400_with_one_line_json_and_the_cli_exits_2(sample):
    data_dir, store = sample
    with serve_on_loopback(app_for(data_dir, store)) as base, httpx.Client() as client:
        for path, params in BAD:
            response = client.get(f"{base}/api/{path}", params=params)
            assert response.status_code == 400, (path, params, response.text)
            body = response.json()
            assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]
            proc = run_cli(
                "stats", *_cli_words(path), *_flags(params), "--json",
                "--data-dir", data_dir, "--store", store, check=False,
            )  # fmt: skip
            assert proc.returncode == 2, (path, params, proc.stderr)
        twice = client.get(f"{base}/api/tools?limit=1&limit=2")
        assert twice.status_code == 400
        assert client.get(f"{base}/api/status?x=1").status_code == 400


def test_a_missing_store_is_the_explained_empty_state(tmp_path):
    data_dir = tmp_path / "empty-data"
    data_dir.mkdir()
    store = tmp_path / "none" / "usage.sqlite3"
    with serve_on_loopback(app_for(data_dir, store)) as base, httpx.Client() as client:
        for path in ("summary", "tools", "tokens", "sessions", "tokens/stack", "hours",
                     "fleet/dau", "rollups"):  # fmt: skip
            response = client.get(f"{base}/api/{path}")
            assert response.status_code == 200, (path, response.text)
            assert response.headers["x-store"] == "missing"
            body = response.json()
            if path == "summary":
                assert body["turnCount"] == 0 and body["sessionCount"] == 0
            else:
                assert body == []
        activity = client.get(f"{base}/api/activity", params={"by": "module"})
        assert activity.status_code == 200 and activity.json() == []
        status = client.get(f"{base}/api/status").json()
        assert status["storeExists"] is False and status["running"] is False
        assert client.get(f"{base}/api/version").json() == {"version": "none"}
        page = client.get(f"{base}/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert not store.exists(), "the dashboard must never create the store"


def test_the_store_is_read_only_and_never_blocks_a_writer(sample):
    data_dir, store = sample
    before = store.stat().st_mtime_ns
    with serve_on_loopback(app_for(data_dir, store)) as base, httpx.Client() as client:
        for _ in range(3):
            assert client.get(f"{base}/api/summary").status_code == 200
        writer = sqlite3.connect(store, timeout=0)  # fails at once if anyone blocks it
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('web-test', '1')")
        writer.commit()
        writer.execute("DELETE FROM meta WHERE key = 'web-test'")
        writer.commit()
        writer.close()
        assert client.get(f"{base}/api/summary").status_code == 200
    assert store.stat().st_mtime_ns >= before


def test_the_change_marker_moves_on_a_commit(sample):
    data_dir, store = sample
    with serve_on_loopback(app_for(data_dir, store)) as base, httpx.Client() as client:
        first = client.get(f"{base}/api/version").json()["version"]
        assert client.get(f"{base}/api/version").json()["version"] == first
        writer = sqlite3.connect(store)
        writer.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('web-test', '2')")
        writer.commit()
        writer.execute("DELETE FROM meta WHERE key = 'web-test'")
        writer.commit()
        writer.close()
        assert client.get(f"{base}/api/version").json()["version"] != first
        with client.stream("GET", f"{base}/api/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            lines = events.iter_lines()
            assert next(lines).startswith("retry:")
            assert next(lines) == "event: version"


def test_security_headers_and_loopback_host_only(sample):
    data_dir, store = sample
    with serve_on_loopback(app_for(data_dir, store)) as base, httpx.Client() as client:
        for path in ("/", "/api/summary", "/static/app.js"):
            response = client.get(base + path)
            assert response.status_code == 200, path
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert response.headers["x-content-type-options"] == "nosniff"
        rebinding = client.get(f"{base}/api/summary", headers={"Host": "evil.example:8788"})
        assert rebinding.status_code == 403 and "error" in rebinding.json()


def test_token_mode_needs_the_token(sample):
    data_dir, store = sample
    token = "s3cret-token"
    app = app_for(data_dir, store, token=token)
    with serve_on_loopback(app) as base:
        with httpx.Client() as anon:
            assert anon.get(f"{base}/api/summary").status_code == 401
            assert anon.get(f"{base}/").status_code == 401
            assert anon.get(f"{base}/api/summary?token=wrong").status_code == 401
            wrong = anon.get(f"{base}/api/summary", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            bearer = anon.get(f"{base}/api/summary", headers={"Authorization": f"Bearer {token}"})
            assert bearer.status_code == 200
        with httpx.Client() as browser:
            first = browser.get(f"{base}/?{urlencode({'token': token, 'since': '7d'})}")
            assert first.status_code == 303 and first.headers["location"] == "/?since=7d"
            cookie = first.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
            assert token not in cookie
            assert browser.get(f"{base}/api/summary").status_code == 200
            assert browser.get(f"{base}/").status_code == 200


def test_dashboard_command_serves_and_stops_cleanly(sample):
    data_dir, store = sample
    with dashboard_process(data_dir, store) as (proc, url):
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/api/summary").json() == cli_json(data_dir, store, "summary")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_non_loopback_listen_without_token_is_refused(sample):
    data_dir, store = sample
    proc = run_cli(
        "dashboard", "--listen", "0.0.0.0:0", "--data-dir", data_dir, "--store", store,
        check=False, timeout=20,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "token" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_shows_the_same_page_at_its_root(sample, tmp_path):
    data_dir, store = sample
    proc = subprocess.Popen(
        [sys.executable, "-m", "roder_analyticsd", "serve", "--listen", "127.0.0.1:0", "--json",
         "--data-dir", str(data_dir), "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, proc.communicate(timeout=10)
        url = json.loads(line)["listen"]
        page = httpx.get(f"{url}/")
        assert page.status_code == 200 and 'data-metric="turnCount"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert httpx.get(f"{url}/static/app.js").status_code == 200
        assert httpx.get(f"{url}/api/summary").json() == cli_json(data_dir, store, "summary")
        assert httpx.get(f"{url}/healthz").json() == {"ok": True}  # the receiver's own
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_page_ships_in_the_wheel(tmp_path):
    """package data: a non-editable install has the page and the vendored library
    (built as pip builds it for `pip install .`, with pyproject's build backend)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
         str(REPO)],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("roder_analyticsd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("index.html", "app.js", "app.css", "favicon.svg", "vendor/uPlot.iife.min.js",
                 "vendor/uPlot.min.css", "vendor/uPlot.LICENSE"):  # fmt: skip
        assert f"roder_analyticsd/web/static/{name}" in names, name


def test_a_kept_answer_never_outlives_a_commit(tmp_path):
    data_dir = copy_sample(tmp_path / "roder-data")
    store = backfill(data_dir, tmp_path / "usage.sqlite3")
    with serve_on_loopback(app_for(data_dir, store)) as base, httpx.Client() as client:
        first = client.get(f"{base}/api/summary").json()
        assert client.get(f"{base}/api/summary").json() == first  # kept
        writer = sqlite3.connect(store)
        writer.execute(
            "INSERT INTO turns (thread_id, turn_id, started_at_ms, terminal_status)"
            " VALUES ('thr-cache', 'turn-1', 1794974571621, 'completed')"
        )
        writer.commit()
        writer.close()
        second = client.get(f"{base}/api/summary").json()
        assert second["turnCount"] == first["turnCount"] + 1
        assert second == cli_json(data_dir, store, "summary")
