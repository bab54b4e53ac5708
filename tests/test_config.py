"""config.toml is checked when a command starts: one line, exit 2, never a
traceback and never a surprise at first use (issue 14, item 16)."""

from __future__ import annotations

import pytest
from conftest import run_cli

from roder_analyticsd.config import MAX_RETENTION_DAYS, load_settings

BAD_CONFIGS = [
    ("[analytics]\nretention_days = 9223372036854775807\n", "retention_days"),
    (f"[analytics]\nretention_days = {MAX_RETENTION_DAYS + 1}\n", "retention_days"),
    ("[analytics]\nretention_days = -1\n", "retention_days"),
    ('[analytics]\nstore = ""\n', "store"),
    ('[analytics]\nstore = "  "\n', "store"),
    ("[analytics.collect]\ntoken = true\n", "token"),
    ("[analytics.collect]\ntoken = 12345\n", "token"),
    ("[analytics.forward]\ntoken = true\n", "token"),
    ("[analytics.forward]\ntoken = 12345\n", "token"),
    ('[analytics.forward]\nendpoint = "ftp://example.com/collect"\n', "endpoint"),
    ('[analytics.forward]\nendpoint = "example.com/collect"\n', "endpoint"),
    ('[analytics.forward]\nendpoint = "http://:8787/collect"\n', "endpoint"),
    ('[analytics.forward]\nendpoint = "http://example.com:99999/collect"\n', "endpoint"),
    ("[analytics.forward]\nendpoint = 8787\n", "endpoint"),
    ("[analytics.forward]\nbatch_size = 0\n", "batch_size"),
    ('[analytics]\nenabled = "yes"\n', "enabled"),
    ("analytics = 3\n", "[analytics]"),
    ("[analytics]\nforward = 3\n", "[analytics.forward]"),
]


def _refused(proc, needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "config.toml" in lines[0] and needle in lines[0], proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(("text", "needle"), BAD_CONFIGS)
def test_bad_config_is_refused_at_start(tmp_path, text, needle):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text(text)
    store = tmp_path / "s.sqlite3"
    _refused(run_cli("--once", "--json", "--data-dir", data, "--store", store, check=False), needle)
    assert not store.exists()


def test_config_that_is_not_utf8_is_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_bytes(b'[analytics]\nstore = "caf\xe9.sqlite3"\n')
    _refused(run_cli("status", "--json", "--data-dir", data, check=False), "UTF-8")
    (data / "config.toml").write_bytes(b"\xff\xfe[\x00a\x00")
    _refused(run_cli("stats", "summary", "--data-dir", data, check=False), "UTF-8")


def test_config_that_is_not_toml_or_not_a_file_is_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text("this is = = not toml\n")
    _refused(run_cli("status", "--data-dir", data, check=False), "config.toml")
    (data / "config.toml").unlink()
    (data / "config.toml").mkdir()
    _refused(run_cli("status", "--data-dir", data, check=False), "config.toml")


def test_daemon_and_serve_refuse_a_bad_config_before_starting(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text('[analytics.forward]\nendpoint = "localhost:8787"\n')
    store = tmp_path / "s.sqlite3"
    _refused(run_cli("--data-dir", data, "--store", store, check=False, timeout=30), "endpoint")
    (data / "config.toml").write_text("[analytics.collect]\ntoken = true\n")
    proc = run_cli(
        "serve", "--listen", "127.0.0.1:0", "--data-dir", data, "--store", store,
        check=False, timeout=30,
    )  # fmt: skip
    _refused(proc, "token")
    assert not store.exists()


def test_a_refused_token_is_never_echoed(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text('[analytics.forward]\ntoken = "hunter2 canary-Zq9"\n')
    proc = run_cli("status", "--data-dir", data, check=False)
    _refused(proc, "token")
    assert "canary-Zq9" not in proc.stderr and "hunter2" not in proc.stderr


def test_good_config_is_read_as_written(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text(
        "[roder]\nanything = 1\n"  # Roder's own tables are not ours to judge
        '[analytics]\nretention_days = 400\nstore = "~/a.sqlite3"\nfuture_key = 1\n'
        'workspace_labels = "hashed"\n'
        '[analytics.collect]\ntoken = "s3cret"\n'
        '[analytics.forward]\nendpoint = "HTTPS://[::1]:8787/collect"\ntoken = "t0k"\n'
        "batch_size = 50\n[analytics.daemon]\nflush_interval_ms = 200\n"
    )
    settings = load_settings(data)
    assert settings.retention_days == 400 and settings.workspace_labels == "hashed"
    assert settings.store.name == "a.sqlite3" and "~" not in str(settings.store)
    assert settings.collect_token == "s3cret" and settings.forward_token == "t0k"
    assert settings.forward_endpoint == "HTTPS://[::1]:8787/collect"
    assert settings.forward_batch_size == 50 and settings.daemon == {"flush_interval_ms": 200}
