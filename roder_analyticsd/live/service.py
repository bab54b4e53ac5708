"""Install the daemon as a per-user service: systemd on Linux, launchd on macOS.

The service runs `roder-analyticsd` with no sub-command (the tailing daemon) at
low CPU and I/O priority, restarts it only when it fails, and waits for the
network only when forwarding is on: otherwise the daemon reads local files and
stays useful offline. The executable is the one of the venv that runs the
install (the README's set-up installs into `.venv`).

The systemd unit is sandboxed as far as a passive reader allows: the whole
file system read-only except the data dir (and the store's dir when it lies
elsewhere), no privilege gain, a private /tmp, files created 0600.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from roder_analyticsd.config import default_data_dir

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


def render_systemd_unit(
    exe: str,
    args: Sequence[str] = (),
    *,
    writable: Sequence[str] = (),
    forwarding: bool = False,
) -> str:
    """A systemd user unit that runs `exe args...`, writing only under
    `writable` (the data dir, and the store's dir when it lies elsewhere);
    `forwarding` orders it after the network is up."""
    command = " ".join(
        [_systemd_quote(exe, executable=True), *(_systemd_quote(arg) for arg in args)]
    )
    if forwarding:
        network = (
            "# Forwarding is on ([analytics.forward] endpoint): start once the network is up.\n"
            "Wants=network-online.target\n"
            "After=network-online.target\n"
        )
    else:
        network = "# Reads local files only (forwarding is off): no network dependency.\n"
    # no variables in paths: only specifiers (%) and quoting apply
    paths = " ".join(_systemd_quote(path, executable=True) for path in writable)
    read_write = f"ReadWritePaths={paths}\n" if paths else ""
    return f"""\
[Unit]
Description=Roder usage analytics daemon
{network}
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
# A passive reader: everything read-only but the data dir (and the store's
# dir), no privilege gain, a private /tmp, files only the user can read.
UMask=0077
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
{read_write}
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
        "Umask": 0o077,  # the store and its lock: readable by the user only
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
    data_dir: Path | None = None,
    store: Path | None = None,
    forwarding: bool = False,
) -> tuple[str, str]:
    """Write and enable the user service; return (path, file content).

    With `dry_run` nothing is written and no command runs. `args` are extra daemon
    options (e.g. `--data-dir`); `exe` overrides the detected executable.
    `data_dir` (default: the default data dir) and the store's dir are the
    only places the systemd unit may write; an install creates them (0700),
    since the sandbox can't start on a missing path.
    """
    platform = _platform()
    command = [exe, *args] if exe is not None else [*_daemon_command(), *args]
    writable = _writable_dirs(data_dir, store)
    if platform == "systemd":
        path = _systemd_unit_path()
        content = render_systemd_unit(
            command[0], command[1:], writable=[str(p) for p in writable], forwarding=forwarding
        )
    else:
        path = _launchd_plist_path()
        content = render_launchd_plist(command[0], command[1:])
    if dry_run:
        return str(path), content

    if platform == "systemd":
        systemctl = _require_tool("systemctl")
        for directory in writable:
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise ServiceError(f"cannot create {directory}: {exc.strerror or exc}") from None
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


def _writable_dirs(data_dir: Path | None, store: Path | None) -> list[Path]:
    """The data dir, and the store's dir unless it lies inside the data dir
    (real paths: the sandbox binds what the links point to)."""
    data = Path(os.path.realpath((data_dir or default_data_dir()).expanduser()))
    dirs = [data]
    if store is not None:
        store_dir = Path(os.path.realpath(store.expanduser().parent))
        if not store_dir.is_relative_to(data):
            dirs.append(store_dir)
    return dirs


def _daemon_command() -> list[str]:
    """The real path of the running console script, else the one of the
    running interpreter's venv, else the one on PATH."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == EXECUTABLE and os.access(argv0, os.X_OK):
        return [os.path.realpath(argv0)]
    in_venv = Path(sys.prefix) / "bin" / EXECUTABLE
    if sys.prefix != sys.base_prefix and os.access(in_venv, os.X_OK):
        return [os.path.realpath(in_venv)]
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
