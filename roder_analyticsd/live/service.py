"""Install the daemon as a per-user service: systemd on Linux, launchd on macOS.

The service runs `roder-analyticsd` with no sub-command (the tailing daemon) at
low CPU and I/O priority, restarts it only when it fails, and does not wait for
the network: the daemon reads local files and stays useful offline.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "LAUNCHD_LABEL",
    "SYSTEMD_UNIT",
    "ServiceError",
    "install_service",
    "render_launchd_plist",
    "render_systemd_unit",
    "uninstall_service",
]

SYSTEMD_UNIT = "roder-analyticsd.service"
LAUNCHD_LABEL = "dev.roder.analyticsd"
EXECUTABLE = "roder-analyticsd"

_RESTART_DELAY_S = 5
_NICE = 10


class ServiceError(Exception):
    """An expected install/uninstall failure; the CLI prints it as one line, exit 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- rendering ----------------------------------------------------------------


def render_systemd_unit(exe: str, args: Sequence[str] = ()) -> str:
    """A systemd user unit that runs `exe args...`."""
    command = " ".join(
        [_systemd_quote(exe, executable=True), *(_systemd_quote(arg) for arg in args)]
    )
    return f"""\
[Unit]
Description=Roder usage analytics daemon
# Reads local files only: no network dependency on purpose.

[Service]
Type=simple
ExecStart={command}
Restart=on-failure
RestartSec={_RESTART_DELAY_S}
# SIGTERM makes the daemon flush and checkpoint before exiting 0.
TimeoutStopSec=30
# Background work: stay out of the way of interactive use.
Nice={_NICE}
IOSchedulingClass=idle

[Install]
WantedBy=default.target
"""


def render_launchd_plist(
    exe: str,
    args: Sequence[str] = (),
    label: str = LAUNCHD_LABEL,
    *,
    log_dir: str | None = None,
) -> str:
    """A launchd agent plist that runs `exe args...`; logs go to ~/Library/Logs."""
    logs = Path(log_dir) if log_dir is not None else Path.home() / "Library" / "Logs"
    agent = {
        "Label": label,
        "ProgramArguments": [exe, *args],
        "RunAtLoad": True,
        # Restart after a crash or error exit, not after a clean stop.
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": _RESTART_DELAY_S,
        "ProcessType": "Background",
        "LowPriorityIO": True,
        "Nice": _NICE,
        # launchd does not expand ~, so these must be absolute.
        "StandardOutPath": str(logs / "roder-analyticsd.log"),
        "StandardErrorPath": str(logs / "roder-analyticsd.err.log"),
    }
    return plistlib.dumps(agent, sort_keys=False).decode("utf-8")


def _systemd_quote(word: str, *, executable: bool = False) -> str:
    """Quote one ExecStart word.

    `%` starts a specifier everywhere; `$` starts a variable only in arguments
    (systemd keeps `$$` literally in the executable path).
    """
    if not word or any(ch in word for ch in "\n\r\0"):
        raise ServiceError(f"cannot put {word!r} on a systemd ExecStart line")
    word = word.replace("%", "%%")
    if not executable:
        word = word.replace("$", "$$")
    if any(ch.isspace() or ch in "\"'\\;" for ch in word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


# --- install / uninstall --------------------------------------------------------


def install_service(
    dry_run: bool,
    *,
    args: Sequence[str] = (),
    exe: str | None = None,
) -> tuple[str, str]:
    """Write and enable the user service; return (path, file content).

    With `dry_run` nothing is written and no command runs. `args` are extra daemon
    options (e.g. `--data-dir`); `exe` overrides the detected executable.
    """
    platform = _platform()
    command = [exe, *args] if exe is not None else [*_daemon_command(), *args]
    if platform == "systemd":
        path = _systemd_unit_path()
        content = render_systemd_unit(command[0], command[1:])
    else:
        path = _launchd_plist_path()
        content = render_launchd_plist(command[0], command[1:])
    if dry_run:
        return str(path), content

    if platform == "systemd":
        systemctl = _require_tool("systemctl")
        _write_file(path, content)
        _run([systemctl, "--user", "daemon-reload"])
        # A reinstall must apply the new unit to an already running daemon;
        # try-restart does nothing when it is not running.
        _run([systemctl, "--user", "try-restart", SYSTEMD_UNIT])
        _run([systemctl, "--user", "enable", "--now", SYSTEMD_UNIT])
    else:
        launchctl = _require_tool("launchctl")
        _write_file(path, content)
        domain = f"gui/{os.getuid()}"
        # Replace a loaded copy; failing here just means none was loaded.
        _run([launchctl, "bootout", f"{domain}/{LAUNCHD_LABEL}"], check=False)
        _run([launchctl, "enable", f"{domain}/{LAUNCHD_LABEL}"])
        _run([launchctl, "bootstrap", domain, str(path)])
    return str(path), content


def uninstall_service(dry_run: bool) -> tuple[str, list[str]]:
    """Stop, disable and remove the user service; idempotent.

    Returns (path, commands run or, with `dry_run`, the commands that would run).
    """
    platform = _platform()
    if platform == "systemd":
        path = _systemd_unit_path()
        tool = "systemctl"
        steps = [["--user", "disable", "--now", SYSTEMD_UNIT], ["--user", "daemon-reload"]]
    else:
        path = _launchd_plist_path()
        tool = "launchctl"
        steps = [["bootout", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"]]
    planned = [" ".join([tool, *step]) for step in steps]
    if dry_run:
        return str(path), planned
    if not path.exists():
        return str(path), []  # nothing installed: nothing to undo

    binary = _require_tool(tool)
    if platform == "systemd":
        _run([binary, *steps[0]])
        path.unlink()
        _run([binary, *steps[1]])
    else:
        # bootout fails when the agent is not loaded; removing the file still uninstalls.
        _run([binary, *steps[0]], check=False)
        path.unlink()
    return str(path), planned


# --- helpers ----------------------------------------------------------------------


def _platform() -> str:
    if sys.platform.startswith("linux"):
        return "systemd"
    if sys.platform == "darwin":
        return "launchd"
    raise ServiceError(
        f"install-service supports Linux (systemd) and macOS (launchd), not {sys.platform}"
    )


def _systemd_unit_path() -> Path:
    return Path.home() / ".config" / "systemd" / "user" / SYSTEMD_UNIT


def _launchd_plist_path() -> Path:
    return Path.home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def _daemon_command() -> list[str]:
    """The real path of the running console script, else the one on PATH."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == EXECUTABLE and os.access(argv0, os.X_OK):
        return [os.path.realpath(argv0)]
    found = shutil.which(EXECUTABLE)
    if found:
        return [os.path.realpath(found)]
    # Running from a checkout (`python -m roder_analyticsd`): use this interpreter,
    # not its resolved symlink: a venv's python links to a base interpreter that
    # cannot import the venv's packages.
    return [os.path.abspath(sys.executable), "-m", "roder_analyticsd"]


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServiceError(f"{name} not found; is this a {_platform()} user session?")
    return path


def _write_file(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)  # never leave a half-written unit behind


def _run(command: list[str], *, check: bool = True) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"{Path(command[0]).name} failed: {exc}") from None
    if check and done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        shown = " ".join([Path(command[0]).name, *command[1:]])
        raise ServiceError(f"{shown} failed: {reason}")
