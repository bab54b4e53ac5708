"""Stage 2: what survives of private fields. Pure.

Event bodies never got past the decoder; what is left to redact is the one
private value we do project: a thread's workspace path, which becomes a
stable key plus a label in the user's chosen `workspace_labels` mode.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Literal

from roder_analyticsd.bounds import check_time_ms
from roder_analyticsd.pipeline.batch import Batch, SessionFacts
from roder_analyticsd.timewindow import rfc3339_to_ms

WorkspaceLabels = Literal["full_path", "hashed", "basename_only"]

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def fnv1a_64(text: str) -> str:
    """FNV-1a 64-bit of the UTF-8 bytes, as 16 lowercase hex digits."""
    h = _FNV_OFFSET
    for byte in text.encode():
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def workspace_label(path: str, mode: WorkspaceLabels) -> str:
    if mode == "hashed":
        return fnv1a_64(path)
    if mode == "basename_only":
        return posixpath.basename(path.rstrip("/\\").replace("\\", "/")) or "/"
    return path


def _ms(stamp: str | None) -> int | None:
    if stamp is None:
        return None
    try:  # unreadable or outside the time window: not known
        return check_time_ms(rfc3339_to_ms(stamp))
    except ValueError:
        return None


def redact(batch: Batch, mode: WorkspaceLabels = "full_path") -> Batch:
    sessions = [
        SessionFacts(
            thread_id=meta.thread_id,
            workspace_key=fnv1a_64(meta.workspace) if meta.workspace else None,
            workspace_label=workspace_label(meta.workspace, mode) if meta.workspace else None,
            provider=meta.provider,
            model=meta.model,
            created_at_ms=_ms(meta.created_at),
            updated_at_ms=_ms(meta.updated_at),
        )
        for meta in batch.metadata
    ]
    return dataclasses.replace(batch, metadata=[], sessions=sessions)
