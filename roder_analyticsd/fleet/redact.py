"""analytics.v2 redaction, applied by whoever emits and again by whoever
receives. Pure functions; redacting twice gives the same result as once.

Rules (spec "Redaction"):

* A **path-like key** is removed, with its value, at any depth (in nested
  objects and in objects inside lists). A key is path-like when, split into
  words (camelCase humps, `_`, `-`, `.`, spaces; ASCII letters only; digit
  runs ignored) and lowercased, either

  - its last word is one of `LOCATION_WORDS` (path, cwd, pwd, root, dir,
    directory, folder, file, filename, workspace, home, … and plurals), so
    `path`, `CWD`, `filePath`, `file_path`, `projectDir`, `workspaceRoot`,
    `workingDirectory`, `sourceFiles`, `path2` are removed; or
  - its words run together end with one of `COMPACT_SUFFIXES`, which catches
    all-lowercase compounds (`filepath`, `workdir`, `tmpdir`, `projectroot`)
    and `fileName`, `dirName`, `folderName`, `baseName`.

  Matching ignores case: the key's letters run together and lowercased
  (`fIlE` → `file`) are also checked, against `LOCATION_WORDS` as a whole
  and against the suffixes, plus `file`/`files` as a suffix, which catches
  compounds such as `logfile`, `srcfile`, `LOGFILE`. Only `profile` and
  `profiles` are spared that suffix, so `profile` and `runtimeProfile`
  survive; so do `rootCause`, `fileCount`, `filesChanged`.
* A string that **is an absolute path** (after leading whitespace) is removed
  wherever it occurs: as a value at any depth, as a list element, or as a
  key. Absolute means it starts with `/`, `\\` (which covers UNC
  `\\\\server\\share`), `~` followed by an optional user name and then `/`, `\\`
  or the end (`~`, `~/x`, `~alice/x`), a drive letter `C:\\` or `C:/`, or
  `file:` (a file URI).
* `providerBaseUrl` (at any depth, any casing of the key) is rebuilt from
  scheme, host, port and path, which drops userinfo, query and fragment; a
  value that is not an http(s) URL with a host is dropped.
* `error_occurred` keeps only `ERROR_KEYS`, and only scalar values for them:
  no `message`, `stack` or caller metadata.
* `projectCommitHash` and `projectPath` (removed in v2) are dropped.
* `sessionId` that is not 24 lowercase hex becomes the first 24 hex chars of
  its SHA-256; an empty one is treated as absent.
* The event's own string fields (ids, commitHash, appVersion, platform) are
  replaced by that same hash if they are absolute paths.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from roder_analyticsd.fleet import vocabulary
from roder_analyticsd.fleet.model import AnalyticsEvent

LOCATION_WORDS: frozenset[str] = frozenset(
    {
        "path",
        "paths",
        "pathname",
        "cwd",
        "pwd",
        "root",
        "roots",
        "dir",
        "dirs",
        "dirname",
        "directory",
        "directories",
        "folder",
        "folders",
        "file",
        "files",
        "filename",
        "filenames",
        "workspace",
        "workspaces",
        "home",
    }
)
COMPACT_SUFFIXES: tuple[str, ...] = (
    "path",
    "paths",
    "pathname",
    "cwd",
    "pwd",
    "root",
    "roots",
    "dir",
    "dirs",
    "dirname",
    "directory",
    "directories",
    "folder",
    "folders",
    "foldername",
    "filename",
    "filenames",
    "basename",
    "workspace",
    "workspaces",
)
# Compounds ending in `file(s)` are path-like, except these words.
FILE_SUFFIXES: tuple[str, ...] = ("file", "files")
NOT_FILE_COMPOUNDS: tuple[str, ...] = ("profile", "profiles")
BASE_URL_KEY = "providerbaseurl"
ERROR_KEYS = frozenset(vocabulary.ERROR_KEYS)
REMOVED_FIELDS: frozenset[str] = frozenset({"projectcommithash", "projectpath"})

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_NOT_LETTER = re.compile(r"[^A-Za-z]+")
_HOME = re.compile(r"~[\w.-]*(?:[/\\]|$)")
_DRIVE = re.compile(r"[A-Za-z]:[\\/]")
_SESSION_ID = re.compile(r"[0-9a-f]{24}")
# A host name: no blanks, controls or URL delimiters (they do not survive a re-parse).
_HOST = re.compile(r"[^\s\x00-\x1f\x7f/\\?#@\[\]<>\"{}|^`]+")


def is_path_like_key(key: str) -> bool:
    words = [w.lower() for w in _WORD.findall(key) if not w.isdigit()]
    if words and words[-1] in LOCATION_WORDS:
        return True
    # case-blind: the letters alone, lowercased (`fIlE`, `LogFile`, `srcfile`)
    compact = _NOT_LETTER.sub("", key).lower()
    if not compact:
        return False
    return (
        compact in LOCATION_WORDS
        or compact.endswith(COMPACT_SUFFIXES)
        or (compact.endswith(FILE_SUFFIXES) and not compact.endswith(NOT_FILE_COMPOUNDS))
    )


def is_absolute_path(text: str) -> bool:
    t = text.lstrip()
    return (
        t.startswith(("/", "\\"))
        or t[:5].lower() == "file:"
        or _HOME.match(t) is not None
        or _DRIVE.match(t) is not None
    )


def hash24(text: str) -> str:
    # surrogatepass: never fail on a string that is not valid UTF-8.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def redact_session_id(session_id: str | None) -> str | None:
    if not session_id:
        return None
    if _SESSION_ID.fullmatch(session_id):
        return session_id
    return hash24(session_id)


def clean_base_url(value: Any) -> str | None:
    """scheme://host[:port]/path of an http(s) URL, else None."""
    if not isinstance(value, str):
        return None
    try:
        parts = urlsplit(value)  # drops leading blanks/controls, tabs and newlines
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        return None
    if ":" in host:  # IPv6 literal
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
        host = f"[{host}]"
    elif not _HOST.fullmatch(host):
        return None
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path, "", ""))


def _dropped(value: Any) -> bool:
    return isinstance(value, str) and is_absolute_path(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if is_path_like_key(k) or is_absolute_path(k) or _dropped(v):
                continue
            if k.lower() == BASE_URL_KEY:
                url = clean_base_url(v)
                if url is not None:
                    out[k] = url
                continue
            out[k] = _scrub(v)
        return out
    if isinstance(value, list):
        return [_scrub(v) for v in value if not _dropped(v)]
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def redact_properties(event_name: str, props: dict[str, Any]) -> dict[str, Any]:
    """A redacted copy of an event's `properties`."""
    kept = {k: v for k, v in props.items() if k.lower() not in REMOVED_FIELDS}
    if event_name == "error_occurred":
        kept = {k: v for k, v in kept.items() if k in ERROR_KEYS and _is_scalar(v)}
    return _scrub(kept)


def _safe(text: str) -> str:
    return hash24(text) if is_absolute_path(text) else text


def redact_event(ev: AnalyticsEvent) -> AnalyticsEvent:
    return msgspec.structs.replace(
        ev,
        event_id=_safe(ev.event_id),
        installation_id=_safe(ev.installation_id),
        instance_id=_safe(ev.instance_id),
        commit_hash=_safe(ev.commit_hash),
        app_version=_safe(ev.app_version),
        platform=_safe(ev.platform),
        session_id=redact_session_id(ev.session_id),
        properties=redact_properties(ev.event_name, ev.properties),
    )
