"""The store's files: private, created safely by two processes at once,
readable where they cannot be written, and left untouched when refused.
Every case runs the real command line (and daemon) in a subprocess."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from conftest import REPO, _env, dump_tables, run_cli, unavailable
from test_daemon import Daemon, until

CLI = [sys.executable, "-m", "roder_analyticsd"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_line_failure(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("roder-analyticsd: error: "), proc.stderr
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def siblings(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


# ------------------------------------------------------------------ item 5


def test_everything_created_is_private(data_dir: Path, tmp_path: Path) -> None:
    os.chmod(data_dir, 0o700)
    store = data_dir / "analytics" / "usage.sqlite3"
    daemon = Daemon(data_dir, store, tmp_path / "daemon.log").start()
    try:
        wal, shm = store.with_name(store.name + "-wal"), store.with_name(store.name + "-shm")
        until(lambda: wal.exists() and shm.exists(), what="the WAL files")
        lock = store.with_name(store.name + ".lock")
        assert mode(store.parent) == 0o700
        assert {p.name: mode(p) for p in (store, wal, shm, lock)} == {
            p.name: 0o600 for p in (store, wal, shm, lock)
        }
    finally:
        assert daemon.stop() == 0
    export = tmp_path / "usage.jsonl"
    run_cli("export", "--store", store, "--output", export)
    assert mode(export) == 0o600


def test_an_existing_store_keeps_the_mode_its_user_gave_it(data_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "shared" / "usage.sqlite3"
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", store)
    os.chmod(store.parent, 0o750)
    os.chmod(store, 0o640)
    (data_dir / "threads" / "thr-new").mkdir()
    (data_dir / "threads" / "thr-new" / "events.jsonl").write_bytes(b"")
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", store)
    assert (mode(store.parent), mode(store)) == (0o750, 0o640)


# ------------------------------------------------------------------ item 10


def test_two_first_runs_on_a_missing_store_both_succeed(data_dir: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.sqlite3"
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", reference)
    export = tmp_path / "usage.jsonl"
    run_cli("export", "--store", reference, "--output", export)
    for attempt in range(2):
        store = tmp_path / f"new-{attempt}" / "usage.sqlite3"
        imported = tmp_path / f"imported-{attempt}" / "usage.sqlite3"
        if attempt == 1:  # an empty file where the store goes (`touch`): migrated in place
            for path in (store, imported):
                path.parent.mkdir()
                path.touch()
        commands = [
            ["--once", "--best-effort", "--data-dir", data_dir, "--store", store],
            ["--once", "--best-effort", "--data-dir", data_dir, "--store", store],
            ["import", export, "--store", imported],
            ["import", export, "--store", imported],
        ]
        procs = [
            subprocess.Popen(
                [*CLI, *map(str, args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_env(),
                cwd=REPO,
            )
            for args in commands
        ]
        for proc in procs:
            _out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert "database is locked" not in err and "already exists" not in err
        assert dump_tables(store) == dump_tables(reference)
        assert not [name for name in siblings(store) if ".new-" in name]  # no leftovers


# ------------------------------------------------------------------ item 17


def test_status_on_a_corrupt_store_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "usage.sqlite3"
    store.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    for args in (["status"], ["stats", "summary"], ["export"]):
        line = one_line_failure(
            run_cli(*args, "--data-dir", data_dir, "--store", store, check=False), 1
        )
        assert "not a valid roder-analyticsd database" in line


def test_a_store_path_that_is_a_directory_is_one_line(data_dir: Path) -> None:
    store_dir = data_dir / "analytics" / "a-dir"
    store_dir.mkdir(parents=True)
    (data_dir / "config.toml").write_text(f'[analytics]\nstore = "{store_dir}"\n')
    for args in (["status"], ["stats", "summary"], ["export"], ["--once"], []):
        proc = run_cli(*args, "--data-dir", data_dir, check=False, timeout=30)
        stderr = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
        assert (
            stderr[-1] == f"roder-analyticsd: error: store {store_dir} is a directory, not a file"
        )


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """The directory (and the store in it) made read-only: a read-only bind
    mount as root (who ignores modes), modes otherwise."""
    if os.geteuid() != 0:
        saved = {p: mode(p) for p in [directory, *directory.iterdir()]}
        for p in saved:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, m in saved.items():
                os.chmod(p, m)
        return
    bind = subprocess.run(["mount", "--bind", directory, directory], capture_output=True)
    if bind.returncode != 0:
        unavailable(f"cannot bind-mount as root: {bind.stderr.decode().strip()}")
    try:
        remount = ["mount", "-o", "remount,ro,bind", directory]
        assert subprocess.run(remount, capture_output=True).returncode == 0
        yield
    finally:
        subprocess.run(["umount", directory], check=True)


def test_a_read_only_store_is_still_readable(data_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "ro" / "usage.sqlite3"
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", store)
    assert siblings(store) == {store.name}  # the writer closed cleanly: all in the store
    for _ in range(2):  # as left by the writer, then with the -shm and -wal readers leave
        names = siblings(store)
        with read_only(store.parent):
            summary = run_cli("stats", "summary", "--json", "--store", store).stdout
            exported = run_cli("export", "--store", store).stdout
            status = run_cli("status", "--json", "--data-dir", data_dir, "--store", store)
            line = one_line_failure(
                run_cli("--once", "--data-dir", data_dir, "--store", store, check=False), 1
            )
            assert "read-only" in line or "readonly" in line
            assert siblings(store) == names
        assert summary == run_cli("stats", "summary", "--json", "--store", store).stdout
        assert exported == run_cli("export", "--store", store).stdout
        assert '"filesTracked":31' in status.stdout.replace(" ", "")


# ------------------------------------------------------------------ item 18


def test_a_refused_store_is_not_modified(data_dir: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "notes.sqlite3"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
        conn.commit()
    newer = tmp_path / "newer.sqlite3"
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", newer)
    with contextlib.closing(sqlite3.connect(newer)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")  # as a newer version might leave it
        conn.execute("PRAGMA user_version = 99")
    export = tmp_path / "usage.jsonl"
    run_cli("export", "--store", newer, "--output", export)
    for store, reason in ((foreign, "another application"), (newer, "newer than")):
        before, names = digest(store), siblings(store)
        for args in (["--once"], ["import", export]):
            proc = run_cli(*args, "--data-dir", data_dir, "--store", store, check=False)
            assert reason in one_line_failure(proc, 1)
        daemon = run_cli("--data-dir", data_dir, "--store", store, check=False, timeout=30)
        assert daemon.returncode == 1 and "Traceback" not in daemon.stderr
        assert reason in daemon.stderr.strip().splitlines()[-1]
        assert digest(store) == before  # not even switched to WAL
        assert siblings(store) - {store.name + ".lock"} == names  # the daemon's lock file
    assert "another application" in one_line_failure(
        run_cli("stats", "summary", "--store", foreign, check=False), 1
    )


def test_reading_never_changes_the_store(data_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "usage.sqlite3"
    run_cli("--once", "--best-effort", "--data-dir", data_dir, "--store", store)
    for journal in ("wal", "delete"):  # as we leave it, and as another tool might
        with contextlib.closing(sqlite3.connect(store)) as conn:
            conn.execute(f"PRAGMA journal_mode = {journal}")
        before = digest(store)
        for args in (["stats", "summary"], ["export"], ["status", "--data-dir", data_dir]):
            run_cli(*args, "--store", store)
        assert digest(store) == before, journal
