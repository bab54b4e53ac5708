"""The daemon's own settings: `[analytics.daemon]` in config.toml.

```toml
[analytics.daemon]
flush_interval_ms = 100   # longest a change waits before it is written
rescan_interval_s = 30    # full rescan backing up the file watcher
rollup_interval_s = 60    # refresh of the rollups of days written since
busy_timeout_ms = 5000    # how long a write waits for another writer's lock
retry_max_s = 5           # longest wait between retries while the store refuses writes
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class OptionsError(ValueError):
    """A bad value under [analytics.daemon]."""


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    flush_interval: float = 0.1
    rescan_interval: float = 30.0
    rollup_interval: float = 60.0
    retention_interval: float = 86_400.0
    busy_timeout_ms: int = 5000
    # how long SIGTERM waits for the write in flight before abandoning it
    stop_grace: float = 5.0
    # an unreadable file is tried again this often (besides every rescan)
    file_retry_interval: float = 5.0
    # store trouble (locked, disk full): retry backoff bounds
    retry_min: float = 0.25
    retry_max: float = 5.0

    @property
    def watch_step_ms(self) -> int:
        """The watcher yields once no change came for this long (a lone
        event), and at least this often during a flood (its debounce)."""
        return max(5, min(20, int(self.flush_interval * 1000) // 2))


# key → (attribute, scale to the attribute's unit, smallest value, largest value)
_KEYS: dict[str, tuple[str, float, float, float]] = {
    "flush_interval_ms": ("flush_interval", 0.001, 1, 10_000),
    "rescan_interval_s": ("rescan_interval", 1.0, 0.1, 86_400),
    "rollup_interval_s": ("rollup_interval", 1.0, 0.05, 86_400),
    "busy_timeout_ms": ("busy_timeout_ms", 1.0, 0, 600_000),
    "retry_max_s": ("retry_max", 1.0, 0.05, 3600),
}


def parse_options(table: dict[str, Any]) -> tuple[DaemonOptions, list[str]]:
    """Options from the `[analytics.daemon]` table, and the unknown keys
    (ignored: a newer config must not stop an older daemon)."""
    values: dict[str, Any] = {}
    unknown: list[str] = []
    for key, raw in table.items():
        spec = _KEYS.get(key)
        if spec is None:
            unknown.append(key)
            continue
        attr, scale, low, high = spec
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not low <= raw <= high:
            raise OptionsError(f"[analytics.daemon] {key} must be a number from {low} to {high}")
        values[attr] = int(raw) if attr == "busy_timeout_ms" else raw * scale
    return DaemonOptions(**values), sorted(unknown)
