"""User-service files: valid, low priority, restart on failure; installs touch only HOME."""

from __future__ import annotations

import configparser
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import unavailable

from roder_analyticsd.live.service import (
    ServiceError,
    install_service,
    render_launchd_plist,
    render_systemd_unit,
    uninstall_service,
)

REPO = Path(__file__).resolve().parents[1]
EXE = "/opt/roder/bin/roder-analyticsd"


def parse_unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


def sections(parser: configparser.ConfigParser) -> dict[str, dict[str, str]]:
    return {name: dict(parser[name]) for name in parser.sections()}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty PATH: only fakes placed here can run, never the real systemctl."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    return path


def fake_tool(bin_dir: Path, name: str, log: Path, fail_on: str = "", stderr: str = "") -> None:
    script = bin_dir / name
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >> '{log}'\n"
        f'if [ -n "{fail_on}" ] && [ "$1" = "{fail_on}" -o "$2" = "{fail_on}" ]; then\n'
        f"  echo '{stderr}' >&2; exit 1\n"
        "fi\n"
    )
    script.chmod(0o755)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def no_subprocess(*args, **kwargs):
    raise AssertionError("a dry run must not run commands")


# --- systemd ----------------------------------------------------------------------


def test_systemd_unit_parses_and_sets_policy() -> None:
    unit = parse_unit(render_systemd_unit(EXE, ["--data-dir", "/data/roder"]))
    svc = unit["Service"]
    assert svc["Type"] == "simple"
    assert svc["ExecStart"] == f"{EXE} --data-dir /data/roder"
    assert svc["Restart"] == "on-failure"
    assert svc["RestartSec"] == "5"
    assert int(svc["Nice"]) > 0
    assert svc["IOSchedulingClass"] in ("idle", "best-effort")
    assert unit["Install"]["WantedBy"] == "default.target"
    # No network dependency: the daemon only reads local files.
    for key in ("After", "Wants", "Requires", "BindsTo"):
        assert "network" not in unit["Unit"].get(key, "")


def test_systemd_unit_is_sandboxed_for_a_passive_reader() -> None:
    unit = parse_unit(render_systemd_unit(EXE, writable=["/data/roder", "/srv/a b/100%"]))
    svc = unit["Service"]
    assert svc["ProtectSystem"] == "strict"
    assert svc["ReadWritePaths"] == '/data/roder "/srv/a b/100%%"'
    assert (svc["NoNewPrivileges"], svc["PrivateTmp"], svc["UMask"]) == ("yes", "yes", "0077")


def test_systemd_unit_waits_for_the_network_only_when_forwarding() -> None:
    unit = parse_unit(render_systemd_unit(EXE, writable=["/d"], forwarding=True))
    assert unit["Unit"]["Wants"] == "network-online.target"
    assert unit["Unit"]["After"] == "network-online.target"
    quiet = parse_unit(render_systemd_unit(EXE, writable=["/d"], forwarding=False))
    assert "Wants" not in quiet["Unit"] and "After" not in quiet["Unit"]


def _verify(unit_file: Path, home: Path) -> None:
    """`systemd-analyze --user verify`: no error and no warning about the unit."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        unavailable("systemd-analyze is not installed (Debian: apt-get install systemd)")
    runtime = home / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    done = subprocess.run(
        [tool, "--user", "verify", str(unit_file)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and unit_file.name not in done.stderr, done.stderr


@pytest.mark.parametrize("forwarding", [False, True])
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path, forwarding: bool) -> None:
    home = tmp_path / "home"
    exe = home / "venv dir" / "bin" / "roder-analyticsd"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    data, elsewhere = home / ".roder", tmp_path / "store 100%"
    data.mkdir()
    elsewhere.mkdir()
    unit = tmp_path / "roder-analyticsd.service"
    unit.write_text(
        render_systemd_unit(
            str(exe), ["--data-dir", str(data), "--store", str(elsewhere / "s.sqlite3")],
            writable=[str(data), str(elsewhere)], forwarding=forwarding,
        )
    )  # fmt: skip
    _verify(unit, home)


def test_systemd_template_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    home = tmp_path / "home"
    exe = home / "roder-analyticsd" / ".venv" / "bin" / "roder-analyticsd"  # as documented
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (home / ".roder").mkdir()
    unit = tmp_path / "roder-analyticsd.service"
    shutil.copy(REPO / "systemd" / "roder-analyticsd.service", unit)
    _verify(unit, home)


def test_systemd_exec_start_quotes_specials() -> None:
    unit = parse_unit(render_systemd_unit("/home/a b/x%y$z", ["--data-dir", "/d 1/%h$HOME", 'a"b']))
    # % is a specifier everywhere; $ is a variable only in arguments (checked with
    # systemd-analyze verify, which keeps $$ literally in the executable path).
    assert unit["Service"]["ExecStart"] == '"/home/a b/x%%y$z" --data-dir "/d 1/%%h$$HOME" "a\\"b"'


def test_systemd_rejects_newlines_in_arguments() -> None:
    with pytest.raises(ServiceError):
        render_systemd_unit(EXE, ["--data-dir", "/x\nExecStartPre=/bin/evil"])


# --- launchd -----------------------------------------------------------------------


def test_launchd_plist_parses_and_sets_policy(home: Path) -> None:
    args = ["--data-dir", "/Users/me/R&D <x>"]
    agent = plistlib.loads(render_launchd_plist(EXE, args).encode())
    assert agent["Label"] == "dev.roder.analyticsd"
    assert agent["ProgramArguments"] == [EXE, *args]
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}
    assert agent["ProcessType"] == "Background"
    assert agent["LowPriorityIO"] is True
    assert agent["Nice"] > 0
    assert agent["Umask"] == 0o077
    logs = home / "Library" / "Logs"
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert Path(agent[key]).parent == logs


def test_launchd_label_is_configurable() -> None:
    agent = plistlib.loads(render_launchd_plist(EXE, [], label="dev.roder.test").encode())
    assert agent["Label"] == "dev.roder.test"


# --- static templates ------------------------------------------------------------


def test_systemd_template_matches_renderer() -> None:
    template = parse_unit((REPO / "systemd" / "roder-analyticsd.service").read_text())
    rendered = parse_unit(render_systemd_unit(EXE, [], writable=["/data"]))
    # the venv of the README's set-up, and the default data dir
    assert template["Service"]["ExecStart"] == "%h/roder-analyticsd/.venv/bin/roder-analyticsd"
    assert template["Service"]["ReadWritePaths"] == "%h/.roder"
    for key in ("ExecStart", "ReadWritePaths"):
        template["Service"][key] = rendered["Service"][key]
    assert sections(template) == sections(rendered)


def test_launchd_template_matches_renderer() -> None:
    with (REPO / "launchd" / "dev.roder.analyticsd.plist").open("rb") as f:
        template = plistlib.load(f)
    exe = template["ProgramArguments"][0]
    assert template["ProgramArguments"] == [exe]
    rendered = plistlib.loads(
        render_launchd_plist(
            exe, [], log_dir=str(Path(template["StandardOutPath"]).parent)
        ).encode()
    )
    assert template == rendered


# --- dry runs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "relative"),
    [
        ("linux", ".config/systemd/user/roder-analyticsd.service"),
        ("darwin", "Library/LaunchAgents/dev.roder.analyticsd.plist"),
    ],
)
def test_dry_run_writes_and_runs_nothing(
    platform: str,
    relative: str,
    home: Path,
    bin_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = tmp_path / "calls.log"
    fake_tool(bin_dir, "systemctl", log)
    fake_tool(bin_dir, "launchctl", log)
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(subprocess, "run", no_subprocess)

    path, content = install_service(dry_run=True, exe=EXE)
    assert path == str(home / relative)
    if platform == "linux":
        assert parse_unit(content)["Service"]["ExecStart"] == EXE
    else:
        assert plistlib.loads(content.encode())["ProgramArguments"] == [EXE]
    path, planned = uninstall_service(dry_run=True)
    assert path == str(home / relative) and planned

    assert tree(home) == []
    assert not log.exists()


def test_executable_is_the_real_path_of_the_console_script(
    home: Path, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tmp_path / "venv" / "bin" / "roder-analyticsd"
    real.parent.mkdir(parents=True)
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    (bin_dir / "roder-analyticsd").symlink_to(real)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)  # not in a venv

    monkeypatch.setattr(sys, "argv", ["pytest"])  # not the console script: use PATH
    _, content = install_service(dry_run=True)
    assert parse_unit(content)["Service"]["ExecStart"] == str(real.resolve())

    # `python -m roder_analyticsd install-service` from a venv: that venv's script
    venv = tmp_path / "project" / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "roder-analyticsd").write_text("#!/bin/sh\n")
    (venv / "bin" / "roder-analyticsd").chmod(0o755)
    monkeypatch.setattr(sys, "prefix", str(venv))
    _, content = install_service(dry_run=True)
    assert parse_unit(content)["Service"]["ExecStart"] == str(venv / "bin/roder-analyticsd")

    other = tmp_path / "other" / "roder-analyticsd"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setattr(sys, "argv", [str(other), "install-service"])  # the running script wins
    _, content = install_service(dry_run=True, args=["--data-dir", "/data"])
    assert parse_unit(content)["Service"]["ExecStart"] == f"{other.resolve()} --data-dir /data"


def test_without_console_script_runs_the_module(
    home: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(sys, "argv", ["pytest"])
    monkeypatch.setattr(sys, "prefix", str(home))  # a venv without the console script
    _, content = install_service(dry_run=True)
    args = plistlib.loads(content.encode())["ProgramArguments"]
    # the venv interpreter itself, not the base interpreter its symlink points to
    assert args == [os.path.abspath(sys.executable), "-m", "roder_analyticsd"]


# --- real installs against fake tools ------------------------------------------------


def test_systemd_install_and_uninstall(
    home: Path, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.log"
    fake_tool(bin_dir, "systemctl", log)
    monkeypatch.setattr(sys, "platform", "linux")

    data, store = tmp_path / "data", tmp_path / "elsewhere" / "usage.sqlite3"
    path, content = install_service(dry_run=False, exe=EXE, data_dir=data, store=store)
    unit = home / ".config/systemd/user/roder-analyticsd.service"
    assert path == str(unit)
    assert unit.read_text() == content
    # the sandbox can't start on a missing path: both writable dirs exist, 0700
    writable = parse_unit(content)["Service"]["ReadWritePaths"].split()
    assert writable == [os.path.realpath(data), os.path.realpath(store.parent)]
    for directory in (data, store.parent):
        assert directory.is_dir() and directory.stat().st_mode & 0o777 == 0o700
    assert tree(unit.parent) == ["roder-analyticsd.service"]  # no temp file left behind
    assert log.read_text().splitlines() == [
        "--user daemon-reload",
        "--user try-restart roder-analyticsd.service",
        "--user enable --now roder-analyticsd.service",
    ]

    log.unlink()
    assert uninstall_service(dry_run=False)[0] == str(unit)
    assert not unit.exists()
    assert log.read_text().splitlines() == [
        "--user disable --now roder-analyticsd.service",
        "--user daemon-reload",
    ]

    log.unlink()
    assert uninstall_service(dry_run=False) == (str(unit), [])  # idempotent
    assert not log.exists()


def test_launchd_install_and_uninstall(
    home: Path, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.log"
    # bootout fails when nothing is loaded; that must not stop an install.
    fake_tool(
        bin_dir, "launchctl", log, fail_on="bootout", stderr="Boot-out failed: 3: No such process"
    )
    monkeypatch.setattr(sys, "platform", "darwin")

    path, content = install_service(dry_run=False, exe=EXE)
    plist = home / "Library/LaunchAgents/dev.roder.analyticsd.plist"
    assert path == str(plist)
    assert plistlib.loads(plist.read_bytes())["ProgramArguments"] == [EXE]
    domain = f"gui/{os.getuid()}"
    assert log.read_text().splitlines() == [
        f"bootout {domain}/dev.roder.analyticsd",
        f"enable {domain}/dev.roder.analyticsd",
        f"bootstrap {domain} {plist}",
    ]

    uninstall_service(dry_run=False)
    assert not plist.exists()


def test_missing_tool_is_a_service_error_and_writes_nothing(
    home: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for platform, tool in (("linux", "systemctl"), ("darwin", "launchctl")):
        monkeypatch.setattr(sys, "platform", platform)
        with pytest.raises(ServiceError, match=tool) as info:
            install_service(dry_run=False, exe=EXE)
        assert "\n" not in info.value.message
    assert tree(home) == []


def test_failing_tool_reports_its_error_in_one_line(
    home: Path, bin_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_tool(
        bin_dir,
        "systemctl",
        tmp_path / "calls.log",
        fail_on="daemon-reload",
        stderr="Failed to connect to bus: No medium found",
    )
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(ServiceError) as info:
        install_service(dry_run=False, exe=EXE)
    message = str(info.value)
    assert "daemon-reload" in message and "Failed to connect to bus" in message
    assert "\n" not in message


def test_unsupported_platform(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(ServiceError, match="win32"):
        install_service(dry_run=True, exe=EXE)
    with pytest.raises(ServiceError):
        uninstall_service(dry_run=True)
