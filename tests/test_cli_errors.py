"""Expected failures: exit 2 for bad usage or input, exit 1 for runtime
failures, one line on stderr, nothing on stdout, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import run_cli

from roder_analyticsd.cli import main


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, Path]:
    """An empty but valid store (`--once` over an empty data dir)."""
    base = tmp_path_factory.mktemp("errors")
    data_dir = base / "roder"
    data_dir.mkdir()
    store = base / "usage.sqlite3"
    result = CliRunner().invoke(
        main, ["--once", "--data-dir", str(data_dir), "--store", str(store)]
    )
    assert result.exit_code == 0, result.stderr
    return data_dir, store


def assert_one_line(stderr: str, *needles: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("roder-analyticsd: error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)


USAGE_ERRORS = [
    (["stats", "tools", "--bogus"], "--bogus"),
    (["stats", "tools", "--limit", "1001"], "--limit"),
    (["stats", "tools", "--limit", "0"], "--limit"),
    (["stats", "tools", "--limit", "many"], "--limit"),
    (["stats", "summary", "--since", "yesterday"], "--since"),
    (["stats", "summary", "--since", "2026-02-30"], "--since"),
    (["stats", "summary", "--until", "2026-10-20T25:00:00Z"], "--until"),
    (["stats", "summary", "--since", "2026-10-21", "--until", "2026-10-20"], "--since"),
    (["stats", "tokens", "--group", "year"], "--group"),
    (["stats", "tokens", "--timezone", "Mars/Olympus"], "--timezone"),
    (["stats", "tokens", "--timezone", "America"], "--timezone"),
    (["stats", "tools", "--sort", "slowest"], "--sort"),
    (["stats", "tools", "--min-calls", "-1"], "--min-calls"),
    (["stats", "unused"], "--registered"),
    (["stats", "unused", "--registered", " , "], "--registered"),
    (["stats", "rollups", "--thread", "thr-1"], "--thread"),
    (["stats", "rollups", "--timezone", "Europe/Berlin"], "UTC"),
    (["stats", "nope"], "nope"),
    (["export", "--format", "csv"], "--format"),
    (["--bogus"], "--bogus"),
]


@pytest.mark.parametrize(
    ("args", "needle"), USAGE_ERRORS, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)  # noqa: E501
def test_usage_errors_exit_2_with_one_line(store, args, needle):
    data_dir, path = store
    result = CliRunner().invoke(main, [*args, "--data-dir", str(data_dir), "--store", str(path)])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert_one_line(result.stderr, needle)


def test_usage_error_checked_before_the_store(tmp_path):
    """A bad option is a usage error even where there is no store yet."""
    result = CliRunner().invoke(
        main, ["stats", "tools", "--limit", "5000", "--store", str(tmp_path / "none.sqlite3")]
    )
    assert result.exit_code == 2
    assert_one_line(result.stderr, "1000")


def test_real_process_exit_codes_and_stderr(store, tmp_path):
    data_dir, path = store
    bad = run_cli("stats", "tokens", "--group", "fortnight", "--data-dir", data_dir, "--store",
                  path, "--json", check=False)  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert_one_line(bad.stderr, "--group")

    missing = tmp_path / "nowhere" / "usage.sqlite3"
    gone = run_cli("stats", "summary", "--store", missing, "--data-dir", data_dir, check=False)
    assert gone.returncode == 1 and gone.stdout == ""
    assert_one_line(gone.stderr, f"no store at {missing}", "--once")

    ok = run_cli("stats", "summary", "--json", "--data-dir", data_dir, "--store", path)
    assert ok.returncode == 0 and ok.stderr == ""
    assert ok.stdout.startswith('{"sessionCount":0,')


def test_missing_store_is_a_runtime_failure(tmp_path):
    result = CliRunner().invoke(
        main,
        ["stats", "tools", "--store", str(tmp_path / "x.sqlite3"), "--data-dir", str(tmp_path)],
    )
    assert result.exit_code == 1 and result.stdout == ""
    assert_one_line(result.stderr, "no store at")


def test_not_a_database_is_a_runtime_failure(tmp_path):
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    result = CliRunner().invoke(
        main, ["stats", "summary", "--store", str(junk), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 1 and result.stdout == ""
    assert_one_line(result.stderr, str(junk))


def test_bad_import_file_is_bad_input(store, tmp_path):
    data_dir, path = store
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind":"session","schemaVersion":1,"threadId":"a"}\nnot json\n')
    result = CliRunner().invoke(
        main, ["import", str(bad), "--data-dir", str(data_dir), "--store", str(path)]
    )
    assert result.exit_code == 2
    assert_one_line(result.stderr, f"{bad}:2")
    result = CliRunner().invoke(
        main, ["import", str(tmp_path / "absent.jsonl"), "--store", str(path)]
    )
    assert result.exit_code == 2
    assert_one_line(result.stderr, "absent.jsonl")


def test_empty_store_answers_with_empty_results(store):
    data_dir, path = store
    common = ["--json", "--data-dir", str(data_dir), "--store", str(path)]
    for args, want in (
        (["stats", "tools"], "[]"),
        (["stats", "tokens"], "[]"),
        (["stats", "sessions"], "[]"),
        (["stats", "rollups"], "[]"),
        (["stats", "unused", "--registered", "a,b"], '["a","b"]'),
    ):
        result = CliRunner().invoke(main, [*args, *common])
        assert result.exit_code == 0, result.stderr
        assert result.stdout == want + "\n"
    result = CliRunner().invoke(main, ["stats", "summary", *common])
    assert '"costUsd":0.0' in result.stdout and '"mostCalledTool":null' in result.stdout


def test_export_to_an_unwritable_place_is_a_runtime_failure(store, tmp_path):
    data_dir, path = store
    target = tmp_path / "missing-dir" / "usage.jsonl"
    result = CliRunner().invoke(
        main,
        ["export", "--format", "jsonl", "--output", str(target),
         "--data-dir", str(data_dir), "--store", str(path)],
    )  # fmt: skip
    assert result.exit_code == 1
    assert_one_line(result.stderr, f"cannot write {target}")
    assert not target.parent.exists()
