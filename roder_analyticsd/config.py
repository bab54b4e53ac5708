"""Where things are and what the user chose: data dir, store, `[analytics]`.

The `[analytics]` tables of config.toml are declared below as msgspec
Structs with their constraints, so a bad value is refused when a command
starts (one line, exit 2), never at first use. Unknown keys are ignored: a
newer config must not stop an older daemon, and config.toml is Roder's file.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect
from msgspec import Meta, Struct

WorkspaceLabels = Literal["full_path", "hashed", "basename_only"]
WORKSPACE_LABEL_MODES = ("full_path", "hashed", "basename_only")

# 100 years: more is no retention at all, and ms arithmetic stays far inside 64 bits
MAX_RETENTION_DAYS = 36_500
# config.toml is a few lines; anything bigger is not a config file
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(Exception):
    """config.toml is unreadable or has a bad value."""


# A bearer token goes into an HTTP header: visible ASCII, no blanks.
Token = Annotated[
    str,
    Meta(
        min_length=1, pattern=r"^[\x21-\x7e]+$", description="a non-empty string of visible ASCII"
    ),
]
HttpUrl = Annotated[
    str,
    Meta(
        pattern=r"(?i)^https?://[^\s/?#]+(?:[/?#]\S*)?$",
        description='an http(s) URL such as "https://host/collect"',
    ),
]
StorePath = Annotated[str, Meta(pattern=r"\S", description="a non-empty path")]


class CollectConfig(Struct, frozen=True):
    """`[analytics.collect]`: the analytics.v2 receiver (`serve`)."""

    token: Token | None = None
    # where `serve` stores what it receives: a SQLite path or a PostgreSQL URL
    # (default: the store of [analytics] store)
    store: StorePath | None = None


class DashboardConfig(Struct, frozen=True):
    """`[analytics.dashboard]`: the web page (`dashboard`); off loopback only with a token."""

    token: Token | None = None


class ForwardConfig(Struct, frozen=True):
    """`[analytics.forward]`: the daemon's forwarder (off without an endpoint)."""

    endpoint: HttpUrl | None = None
    token: Token | None = None
    batch_size: Annotated[
        int, Meta(ge=1, le=10_000, description="a whole number from 1 to 10000")
    ] = 20

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            try:
                parts = urlsplit(self.endpoint)
                parts.port  # noqa: B018 (raises on a bad port)
            except ValueError:
                parts = None
            if parts is None or not parts.hostname:
                raise ValueError("endpoint must be " + _description(ForwardConfig, "endpoint"))


class SourcesConfig(Struct, frozen=True):
    """`[analytics.sources]`: which agents' logs besides Roder's are read."""

    # "auto": the Claude Code roots that exist; true: they must exist; false: never
    claude_code: Annotated[bool | Literal["auto"], Meta(description='"auto", true or false')] = (
        "auto"
    )


class AnalyticsConfig(Struct, frozen=True):
    """`[analytics]`."""

    enabled: Annotated[bool, Meta(description="true or false")] = True
    workspace_labels: Annotated[
        WorkspaceLabels, Meta(description="one of " + ", ".join(WORKSPACE_LABEL_MODES))
    ] = "full_path"
    retention_days: Annotated[
        int,
        Meta(
            ge=0,
            le=MAX_RETENTION_DAYS,
            description=f"a whole number from 0 to {MAX_RETENTION_DAYS}",
        ),
    ] = 0
    store: StorePath | None = None
    collect: CollectConfig = msgspec.field(default_factory=CollectConfig)
    dashboard: DashboardConfig = msgspec.field(default_factory=DashboardConfig)
    forward: ForwardConfig = msgspec.field(default_factory=ForwardConfig)
    sources: SourcesConfig = msgspec.field(default_factory=SourcesConfig)
    # checked by live.options when the daemon starts
    daemon: dict[str, Any] = msgspec.field(default_factory=dict)


class ConfigFile(Struct, frozen=True):
    analytics: AnalyticsConfig = msgspec.field(default_factory=AnalyticsConfig)


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    store: Path
    enabled: bool = True
    workspace_labels: WorkspaceLabels = "full_path"
    retention_days: int = 0
    collect_token: str | None = None
    collect_store: str | None = None
    dashboard_token: str | None = None
    forward_endpoint: str | None = None
    forward_token: str | None = None
    forward_batch_size: int = 20
    daemon: dict[str, Any] = field(default_factory=dict)
    # [analytics.sources] claude_code, and the roots --claude-dir gave
    claude_code: bool | Literal["auto"] = "auto"
    claude_dirs: tuple[Path, ...] = ()


def default_data_dir() -> Path:
    for var in ("RODER_CONFIG_DIR", "RODER_DATA_DIR"):
        value = os.environ.get(var)
        if value:
            return Path(value).expanduser()
    return Path.home() / ".roder"


def _description(struct: type[Struct], name: str) -> str:
    """The `description` a field's Meta declares (its constraint in words)."""
    info = msgspec.inspect.type_info(struct)
    for fld in info.fields:  # type: ignore[attr-defined]
        if fld.name != name:
            continue
        types = fld.type.types if isinstance(fld.type, msgspec.inspect.UnionType) else (fld.type,)
        for typ in types:
            if isinstance(typ, msgspec.inspect.Metadata) and typ.extra_json_schema:
                return str(typ.extra_json_schema.get("description", ""))
    return ""


def _explain(exc: msgspec.ValidationError) -> str:
    """`[table] key: must be …` from msgspec's `… - at `$.analytics.x.y``."""
    text = str(exc)
    message, _, where = text.rpartition(" - at `")
    if not message:
        return text
    keys = where.rstrip("`").removeprefix("$").strip(".").split(".")
    struct: type[Struct] = ConfigFile
    for key in keys[:-1]:  # find the Struct that declares the last key
        hint = {f.name: f.type for f in msgspec.inspect.type_info(struct).fields}.get(key)
        if isinstance(hint, msgspec.inspect.StructType):
            struct = hint.cls
    table, key = ".".join(keys[:-1]), keys[-1]
    if not table:
        return f"[{key}] must be a table"
    hint = {f.name: f.type for f in msgspec.inspect.type_info(struct).fields}.get(key)
    if isinstance(hint, msgspec.inspect.StructType) and not message.startswith("Expected"):
        return f"[{table}.{key}] {message}"  # raised by that table's __post_init__
    description = _description(struct, key)
    if description:
        return f"[{table}] {key} must be {description}"
    if message.startswith("Expected `object`"):
        return f"[{table}.{key}] must be a table"
    return f"[{table}] {key}: {message[:1].lower()}{message[1:]}"


def _read_config(config_path: Path) -> dict[str, Any]:
    try:
        fd = os.open(config_path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{config_path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise ConfigError(f"{config_path}: not a regular file")
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{config_path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{config_path}: larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{config_path}: not UTF-8 (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None


def load_settings(data_dir: Path | None = None, store: Path | None = None) -> Settings:
    data_dir = (data_dir or default_data_dir()).expanduser()
    config_path = data_dir / "config.toml"
    doc = _read_config(config_path)
    try:
        config = msgspec.convert(doc, ConfigFile)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{config_path}: {_explain(exc)}") from None
    analytics = config.analytics
    if store is None and analytics.store is not None:
        store = Path(analytics.store)
    store = (store or data_dir / "analytics" / "usage.sqlite3").expanduser()
    return Settings(
        data_dir=data_dir,
        store=store,
        enabled=analytics.enabled,
        workspace_labels=analytics.workspace_labels,
        retention_days=analytics.retention_days,
        collect_token=analytics.collect.token,
        collect_store=analytics.collect.store,
        dashboard_token=analytics.dashboard.token,
        forward_endpoint=analytics.forward.endpoint,
        forward_token=analytics.forward.token,
        forward_batch_size=analytics.forward.batch_size,
        daemon=analytics.daemon,
        claude_code=analytics.sources.claude_code,
    )
