"""Where things are and what the user chose: data dir, store, `[analytics]`."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

WorkspaceLabels = Literal["full_path", "hashed", "basename_only"]
WORKSPACE_LABEL_MODES = ("full_path", "hashed", "basename_only")


class ConfigError(Exception):
    """config.toml is unreadable or has a bad value."""


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    store: Path
    enabled: bool = True
    workspace_labels: WorkspaceLabels = "full_path"
    retention_days: int = 0
    collect_token: str | None = None
    forward_endpoint: str | None = None
    forward_token: str | None = None
    forward_batch_size: int = 20
    daemon: dict[str, Any] = field(default_factory=dict)


def default_data_dir() -> Path:
    for var in ("RODER_CONFIG_DIR", "RODER_DATA_DIR"):
        value = os.environ.get(var)
        if value:
            return Path(value).expanduser()
    return Path.home() / ".roder"


def _table(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    node: Any = doc
    for key in keys:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    if not isinstance(node, dict):
        raise ConfigError(f"[{'.'.join(keys)}] in config.toml must be a table")
    return node


def load_settings(data_dir: Path | None = None, store: Path | None = None) -> Settings:
    data_dir = (data_dir or default_data_dir()).expanduser()
    doc: dict[str, Any] = {}
    config_path = data_dir / "config.toml"
    try:
        with open(config_path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        pass
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: {exc.strerror or exc}") from None

    analytics = _table(doc, "analytics")
    enabled = analytics.get("enabled", True)
    labels = analytics.get("workspace_labels", "full_path")
    retention = analytics.get("retention_days", 0)
    if not isinstance(enabled, bool):
        raise ConfigError("[analytics] enabled must be true or false")
    if labels not in WORKSPACE_LABEL_MODES:
        raise ConfigError(
            f"[analytics] workspace_labels must be one of {', '.join(WORKSPACE_LABEL_MODES)}"
        )
    if not isinstance(retention, int) or isinstance(retention, bool) or retention < 0:
        raise ConfigError("[analytics] retention_days must be a whole number ≥ 0")
    configured_store = analytics.get("store")
    if store is None and configured_store is not None:
        if not isinstance(configured_store, str):
            raise ConfigError("[analytics] store must be a path")
        store = Path(configured_store)
    store = (store or data_dir / "analytics" / "usage.sqlite3").expanduser()

    collect = _table(doc, "analytics", "collect")
    forward = _table(doc, "analytics", "forward")
    batch_size = forward.get("batch_size", 20)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError("[analytics.forward] batch_size must be a whole number ≥ 1")
    token = collect.get("token")
    endpoint = forward.get("endpoint")
    return Settings(
        data_dir=data_dir,
        store=store,
        enabled=enabled,
        workspace_labels=labels,
        retention_days=retention,
        collect_token=str(token) if token else None,
        forward_endpoint=str(endpoint) if endpoint else None,
        forward_token=str(forward["token"]) if forward.get("token") else None,
        forward_batch_size=batch_size,
        daemon=_table(doc, "analytics", "daemon"),
    )
