"""Claude Code's logs: where they are (discovery), what a line is (typed
views of only the fields we project) and the decode stage (bytes → facts).

Claude Code keeps one JSONL file per session under
`<root>/projects/<project-dir>/<session-id>.jsonl`, and its subagents' (and
side questions') under `<session-id>/subagents/*.jsonl`. The files are
tailed like Roder's (`sources/files.py`): complete lines once, from
crash-exact checkpoints.

Private by construction: msgspec skips every field a Struct does not
declare, so message text, tool inputs, tool results, `toolUseResult` and
summaries are parsed past without ever becoming Python objects. A
message's `content` is kept as raw bytes (a view, never a str) until we
know it is a list of blocks, and blocks are decoded as type/id/name/
tool_use_id/is_error only. `cwd` is decoded: it becomes the session's
workspace, redacted by the shared redact stage like Roder's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from roder_analyticsd.bounds import MAX_TIME_MS, MAX_TOKENS, MIN_TIME_MS, TokenCount, check_time_ms
from roder_analyticsd.pipeline.batch import Batch, ParseError
from roder_analyticsd.sources.roder import ThreadMetadata
from roder_analyticsd.timewindow import rfc3339_to_ms

AGENT = "claude-code"
PROVIDER = "anthropic"
SYNTHETIC = "<synthetic>"
PROJECTS = "projects"
SUBAGENTS = "subagents"
# a file's checkpoint path: "claude-code:<root number>/<path under the root>"
PATH_PREFIX = AGENT + ":"


# --- discovery ---------------------------------------------------------------


def default_roots(env: dict[str, str] | None = None, home: Path | None = None) -> list[Path]:
    """Every entry of $CLAUDE_CONFIG_DIR (comma-separated), else both
    ~/.config/claude and ~/.claude."""
    env = os.environ if env is None else env
    configured = [p.strip() for p in env.get("CLAUDE_CONFIG_DIR", "").split(",") if p.strip()]
    if configured:
        return [Path(p).expanduser() for p in configured]
    home = Path.home() if home is None else home
    return [home / ".config" / "claude", home / ".claude"]


def existing_roots(roots: Iterable[Path]) -> list[Path]:
    """The roots that hold a projects/ dir, each once (symlinked twins too)."""
    out: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for root in roots:
        try:
            st = os.stat(root / PROJECTS)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        out.append(root)
    return out


def _sorted_entries(path: Path) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(path), key=lambda e: e.name)
    except OSError:
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_log(entry: os.DirEntry) -> bool:
    try:
        return entry.name.endswith(".jsonl") and entry.is_file()
    except OSError:
        return False


def _project_logs(project: Path) -> list[Path]:
    """A project dir's session logs, each followed by its subagents' logs."""
    found: list[Path] = []
    for entry in _sorted_entries(project):
        if _is_log(entry):
            found.append(Path(entry.path))
        elif _is_dir(entry):
            found.extend(_subagent_logs(Path(entry.path) / SUBAGENTS))
    return found


def _subagent_logs(subagents: Path) -> list[Path]:
    return [Path(sub.path) for sub in _sorted_entries(subagents) if _is_log(sub)]


def discover(root: Path) -> list[Path]:
    """Every session log and subagent log under one root."""
    found: list[Path] = []
    for project in _sorted_entries(root / PROJECTS):
        if _is_dir(project):
            found.extend(_project_logs(Path(project.path)))
    return found


def is_log_path(path: Path, root: Path) -> bool:
    """Is this path (under `root`) one `discover` would list?"""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return False
    if not parts or parts[0] != PROJECTS or not parts[-1].endswith(".jsonl"):
        return False
    return len(parts) == 3 or (len(parts) == 5 and parts[3] == SUBAGENTS)


def logs_at(path: Path, root: Path) -> list[Path]:
    """The logs `discover` would list at or under `path` (a log, or a dir
    that holds logs: projects/, a project dir, a session's dir or its
    subagents/ dir). A log path is listed even when the file is gone (the
    reader skips it); any other path lists nothing."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return []
    if is_log_path(path, root) and not path.is_dir():
        return [path]
    if not parts or parts[0] != PROJECTS:
        return []
    if len(parts) == 1:
        return discover(root)
    if len(parts) == 2:
        return _project_logs(path)
    if len(parts) == 3:
        return _subagent_logs(path / SUBAGENTS)
    if len(parts) == 4 and parts[3] == SUBAGENTS:
        return _subagent_logs(path)
    return []


def checkpoint_path(path: Path, roots: list[Path], *, hide_workspace: bool = False) -> str:
    """How a file is named in checkpoints and reports: which root, then the
    path under it (never the machine's absolute path). A project dir is
    Claude Code's spelling of a workspace path (`-home-dev-alpha`): with
    `hide_workspace` (workspace labels other than full paths) it is named by
    a hash instead, so the store and the logs keep no workspace path."""
    for number, root in enumerate(roots):
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            continue
        if hide_workspace and len(parts) > 1 and parts[0] == PROJECTS:
            digest = hashlib.blake2b(parts[1].encode(errors="surrogateescape"), digest_size=8)
            parts = (PROJECTS, digest.hexdigest(), *parts[2:])
        return f"{PATH_PREFIX}{number}/{'/'.join(parts)}"
    return PATH_PREFIX + path.name


# --- one line ----------------------------------------------------------------


class _Base(msgspec.Struct, gc=False):
    pass


_NO_RAW = msgspec.Raw()


class CacheCreation(_Base):
    ephemeral_5m_input_tokens: TokenCount | None = None
    ephemeral_1h_input_tokens: TokenCount | None = None


# counts outside bounds.py's range are a parse error for their line (as Roder's)
class Usage(_Base):
    input_tokens: TokenCount | None = None
    output_tokens: TokenCount | None = None
    cache_creation_input_tokens: TokenCount | None = None
    cache_read_input_tokens: TokenCount | None = None
    cache_creation: CacheCreation | None = None


class Block(_Base):
    """A content block: `text`, `input` and `content` are never decoded."""

    type: str | None = None
    id: str | None = None
    name: str | None = None
    tool_use_id: str | None = None
    is_error: bool | None = None


class Message(_Base):
    id: str | None = None
    model: str | None = None
    usage: Usage | None = None
    stop_reason: str | None = None
    # raw JSON bytes: a prompt string is never turned into a str
    content: msgspec.Raw = _NO_RAW  # empty when absent


class NestedLine(_Base, rename="camel"):
    """A subagent's line streamed inside a progress line's `data.message`."""

    type: str | None = None
    timestamp: str | None = None
    request_id: str | None = None
    uuid: str | None = None
    message: Message | None = None


class ProgressData(_Base, rename="camel"):
    type: str | None = None
    agent_id: str | None = None
    message: NestedLine | None = None


class Line(_Base, rename="camel"):
    type: str | None = None
    session_id: str | None = None
    uuid: str | None = None
    timestamp: str | None = None
    is_sidechain: bool | None = None
    request_id: str | None = None
    cwd: str | None = None
    message: Message | None = None
    # only a progress line's data is decoded (other types carry other shapes)
    data: msgspec.Raw = _NO_RAW


class ListMessage(Message):
    """A message whose content is a list of blocks (or null), decoded in the
    same pass as its line. A prompt typed as a string fails this view, and
    its line is read again by `Line`, which never turns it into a str."""

    content: list[Block] | None = None  # type: ignore[assignment]


class ListLine(Line):
    message: ListMessage | None = None  # type: ignore[assignment]


_line = msgspec.json.Decoder(Line)
_list_line = msgspec.json.Decoder(ListLine)
_blocks = msgspec.json.Decoder(list[Block])
_progress = msgspec.json.Decoder(ProgressData)

# What decode hands on, one tuple per fact (positional for speed; the
# field names are below and in pipeline/claude_code.py). `prompt_id` is the
# uuid of the prompt the fact belongs to (see `Prompts`), None if unknown.
PROMPT = "prompt"  # (PROMPT, session, uuid, at_ms, sidechain)
CALL = "call"
# (CALL, session, call_key, at_ms, model, prompt, completion, cached, creation,
#  creation_1h, message_id, sidechain, final, prompt_id)
TOOL_USE = "tool_use"  # (TOOL_USE, session, tool_id, name, at_ms, sidechain, prompt_id)
# (TOOL_RESULT, session, tool_id, at_ms, is_error, sidechain, prompt_id)
TOOL_RESULT = "tool_result"

# --- the current prompt ---------------------------------------------------------
#
# A turn is a prompt and the calls until the next one (claude-code.md). In
# file order, the calls of a stream (a session's main chain, or its
# sidechain) belong to that stream's last prompt line read: `Prompts` maps
# (session, sidechain) to it. A resumed session's file replays another
# session's lines under their own sessionId, so each stream keeps its own.
# Lines nested in progress lines are a subagent's, interleaved with the
# parent's: they move no prompt and belong to none here (the subagent's own
# file ties them). The state at a checkpoint is stored with it (`encode`),
# so a file read in steps, or resumed after a restart, ties every call as
# one read of the whole file does.
Prompts = dict[tuple[str, bool], str]
MAX_PROMPT_STREAMS = 64  # a file holds a few sessions; past this the oldest is forgotten


def enter_prompt(prompts: Prompts, stream: tuple[str, bool], uuid: str) -> None:
    """`uuid` is now the stream's prompt (and the most recent stream)."""
    prompts.pop(stream, None)
    prompts[stream] = uuid
    if len(prompts) > MAX_PROMPT_STREAMS:
        del prompts[next(iter(prompts))]  # deterministic in file order: the least recent


def encode_prompts(prompts: Prompts) -> str | None:
    """The state as a checkpoint stores it (None: no prompt yet)."""
    if not prompts:
        return None
    return json.dumps([[s, side, u] for (s, side), u in prompts.items()], separators=(",", ":"))


def decode_prompts(text: str | None) -> Prompts:
    if not text:
        return {}
    try:
        return {(str(s), bool(side)): str(u) for s, side, u in json.loads(text)}
    except (ValueError, TypeError):
        return {}  # unreadable: the calls until the next prompt go untied


_PROJECTED_TYPES = frozenset({"user", "assistant", "progress"})
_MAX_MESSAGE = 200


def _short(exc: Exception) -> str:
    # msgspec messages name the failing JSON path, never the offending value.
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:_MAX_MESSAGE]


def _count(value: int | None) -> int:
    return value if value is not None and value > 0 else 0


def _call(
    out: list, session: str, msg: Message, request_id: str | None, uuid: str | None,
    at: int, sidechain: bool, line: bytes, prompt_id: str | None,
) -> None:  # fmt: skip
    usage = msg.usage
    if usage is None or msg.model == SYNTHETIC:
        return
    cached = _count(usage.cache_read_input_tokens)
    split = usage.cache_creation
    if split is not None:
        creation_1h = _count(split.ephemeral_1h_input_tokens)
        creation = _count(split.ephemeral_5m_input_tokens) + creation_1h
    else:
        creation_1h = 0
        creation = _count(usage.cache_creation_input_tokens)
    prompt = _count(usage.input_tokens) + creation + cached
    completion = _count(usage.output_tokens)
    if prompt + completion > MAX_TOKENS:  # the total is a count too
        raise ValueError(f"token counts above {MAX_TOKENS}")
    if not (prompt or completion):
        return  # an all-zero usage records nothing
    if msg.id is not None:
        key = f"{msg.id}:{request_id or ''}"
    elif uuid is not None:
        key = f"uuid:{uuid}"
    else:
        key = "line:" + hashlib.blake2b(line, digest_size=16).hexdigest()
    out.append((
        CALL, session, key, at, msg.model, prompt, completion, cached, creation, creation_1h,
        msg.id, sidechain, msg.stop_reason is not None, prompt_id,
    ))  # fmt: skip


def _content(
    out: list, session: str, kind: str | None, msg: Message, uuid: str | None, at: int,
    sidechain: bool, prompts: Prompts | None,
) -> None:  # fmt: skip
    """`prompts`: the file's current prompts (None: a nested line, which
    belongs to no prompt and moves none)."""
    raw = msg.content
    head = bytes(memoryview(raw)[:1])
    if head == b'"':  # a prompt typed as a string: never decoded
        if kind == "user" and uuid is not None:
            out.append((PROMPT, session, uuid, at, sidechain))
            if prompts is not None:
                enter_prompt(prompts, (session, sidechain), uuid)
        return
    if head != b"[":
        return
    blocks = _blocks.decode(raw)
    prompt_id = None if prompts is None else prompts.get((session, sidechain))
    results = 0
    for block in blocks:
        if block.type == "tool_use" and block.id is not None:
            out.append((TOOL_USE, session, block.id, block.name, at, sidechain, prompt_id))
        elif block.type == "tool_result" and block.tool_use_id is not None:
            results += 1
            out.append((TOOL_RESULT, session, block.tool_use_id, at, bool(block.is_error),
                        sidechain, prompt_id))  # fmt: skip
    if kind == "user" and uuid is not None and results < len(blocks):
        out.append((PROMPT, session, uuid, at, sidechain))
        if prompts is not None:
            enter_prompt(prompts, (session, sidechain), uuid)


def decode_line(
    line: bytes, out: list, facts: dict[str, list], prompts: Prompts | None = None
) -> str | None:
    """Decode one complete line into `out`; its session's workspace/model/
    time facts into `facts`; `prompts` is the file's current prompts before
    the line, updated past it. Returns the line's type (None for a blank
    line). Raises ValueError for a line that is not a usable JSON object."""
    if prompts is None:
        prompts = {}
    if not line or line.isspace():
        return None
    try:
        rec = _line.decode(line)
    except msgspec.DecodeError as exc:
        raise ValueError(_short(exc)) from None
    kind = rec.type
    if kind not in _PROJECTED_TYPES or rec.session_id is None:
        return kind or "(none)"
    session = rec.session_id
    sidechain = bool(rec.is_sidechain)
    try:
        if kind == "progress":
            if not len(rec.data):
                return kind
            data = _progress.decode(rec.data)
            nested = data.message
            if data.type != "agent_progress" or nested is None or nested.message is None:
                return kind
            if nested.timestamp is None:
                raise ValueError("progress message without a timestamp")
            at = check_time_ms(rfc3339_to_ms(nested.timestamp))
            msg = nested.message
            # a subagent's message, counted once by its ids wherever it appears
            _call(out, session, msg, nested.request_id, nested.uuid, at, True, line, None)
            _content(out, session, nested.type, msg, nested.uuid, at, True, None)
            _fact(facts, session, None, msg.model, at)
            return kind
        if rec.timestamp is None:
            raise ValueError("line without a timestamp")
        at = check_time_ms(rfc3339_to_ms(rec.timestamp))
        msg = rec.message
        if msg is not None:
            if kind == "assistant":
                prompt_id = prompts.get((session, sidechain))
                _call(out, session, msg, rec.request_id, rec.uuid, at, sidechain, line, prompt_id)
            _content(out, session, kind, msg, rec.uuid, at, sidechain, prompts)
        _fact(facts, session, rec.cwd, msg.model if msg is not None else None, at)
    except msgspec.DecodeError as exc:
        raise ValueError(_short(exc)) from None
    return kind


def _fact(facts: dict[str, list], session: str, cwd: str | None, model: str | None, at: int):
    # [first_at, last_at, cwd_at, cwd, model_at, model]
    f = facts.get(session)
    if f is None:
        f = facts[session] = [at, at, None, None, None, None]
    elif at < f[0]:
        f[0] = at
    elif at > f[1]:
        f[1] = at
    if cwd and (f[2] is None or (at, cwd) > (f[2], f[3])):
        f[2], f[3] = at, cwd
    if model and model != SYNTHETIC and (f[4] is None or (at, model) > (f[4], f[5])):
        f[4], f[5] = at, model


def decode(batch: Batch) -> Batch:
    # One pass per line, in the order decode_line takes: a line's content
    # blocks come with it (ListLine); any line that view refuses (a prompt
    # string, a malformed line, a blank one), and a progress line, goes to
    # decode_line, which reads it exactly as before.
    out: list = []
    facts: dict[str, list] = {}
    prompts = decode_prompts(batch.prompts)
    errors: list[ParseError] = []
    unknown: Counter[str] = Counter()
    ingested = 0
    number = batch.first_line_no - 1
    decode_listed = _list_line.decode
    keep = out.append
    # one str object per distinct session, model and tool name: the staged
    # rows repeat them on every line, and pickle (a worker's rows cross to
    # the writer pickled) writes a shared object once
    same = {}.setdefault
    for line in batch.lines:
        number += 1
        try:
            rec = decode_listed(line)
        except msgspec.DecodeError:
            rec = None
        try:
            if rec is None or rec.type == "progress":
                kind = decode_line(line, out, facts, prompts)
                if kind is None:
                    continue
            else:
                kind = rec.type
                session = rec.session_id
                if kind in _PROJECTED_TYPES and session is not None:
                    _listed(rec, kind, same(session, session), line, keep, facts, same, prompts)
                elif not kind:
                    kind = "(none)"
        except ValueError as exc:
            errors.append(ParseError(batch.path, number, str(exc)))
            continue
        ingested += 1
        if kind not in _PROJECTED_TYPES:
            unknown[kind] += 1
    # every checkpoint of the batch is past its last line: the state it ends in
    state = encode_prompts(prompts)
    return dataclasses.replace(
        batch,
        lines=[],  # raw bytes (bodies included) are not kept past the decoder
        checkpoints=[dataclasses.replace(cp, prompts=state) for cp in batch.checkpoints],
        prompts=state,
        events=out,
        metadata=[_metadata(session, f) for session, f in facts.items()],
        errors=batch.errors + errors,
        unknown_kinds=unknown,
        lines_ingested=ingested,
    )


def _listed(
    rec: ListLine, kind: str, session: str, line: bytes, keep, facts: dict,
    same: Callable[[str, str], str], prompts: Prompts,
) -> None:  # fmt: skip
    """decode_line's work for a user or assistant line decoded as a ListLine
    (_call, _content and _fact inlined: this runs for most lines)."""
    stamp = rec.timestamp
    if stamp is None:
        raise ValueError("line without a timestamp")
    at = rfc3339_to_ms(stamp)
    if not MIN_TIME_MS <= at < MAX_TIME_MS:
        check_time_ms(at)
    sidechain = bool(rec.is_sidechain)
    msg = rec.message
    model = None
    if msg is not None:
        prompt_id = prompts.get((session, sidechain)) if prompts else None
        model = msg.model
        if model is not None:
            model = same(model, model)
        usage = msg.usage
        if kind == "assistant" and usage is not None and model != SYNTHETIC:
            # counts are >= 0 (TokenCount), so `or 0` is _count
            cached = usage.cache_read_input_tokens or 0
            split = usage.cache_creation
            if split is not None:
                creation_1h = split.ephemeral_1h_input_tokens or 0
                creation = (split.ephemeral_5m_input_tokens or 0) + creation_1h
            else:
                creation_1h = 0
                creation = usage.cache_creation_input_tokens or 0
            prompt = (usage.input_tokens or 0) + creation + cached
            completion = usage.output_tokens or 0
            if prompt + completion > MAX_TOKENS:
                raise ValueError(f"token counts above {MAX_TOKENS}")
            if prompt or completion:
                message_id = msg.id
                if message_id is not None:
                    key = f"{message_id}:{rec.request_id or ''}"
                elif rec.uuid is not None:
                    key = f"uuid:{rec.uuid}"
                else:
                    key = "line:" + hashlib.blake2b(line, digest_size=16).hexdigest()
                keep((
                    CALL, session, key, at, model, prompt, completion, cached, creation,
                    creation_1h, message_id, sidechain, msg.stop_reason is not None, prompt_id,
                ))  # fmt: skip
        blocks = msg.content
        if blocks:
            results = 0
            for block in blocks:
                btype = block.type
                if btype == "tool_use":
                    if block.id is not None:
                        name = block.name
                        if name is not None:
                            name = same(name, name)
                        keep((TOOL_USE, session, block.id, name, at, sidechain, prompt_id))
                elif btype == "tool_result" and block.tool_use_id is not None:
                    results += 1
                    keep((TOOL_RESULT, session, block.tool_use_id, at, bool(block.is_error),
                          sidechain, prompt_id))  # fmt: skip
            if kind == "user" and rec.uuid is not None and results < len(blocks):
                keep((PROMPT, session, rec.uuid, at, sidechain))
                enter_prompt(prompts, (session, sidechain), rec.uuid)
    # _fact: [first_at, last_at, cwd_at, cwd, model_at, model]
    f = facts.get(session)
    if f is None:
        f = facts[session] = [at, at, None, None, None, None]
    elif at < f[0]:
        f[0] = at
    elif at > f[1]:
        f[1] = at
    # (at, value) > (f[i], f[i + 1]) without building the tuples
    cwd = rec.cwd
    if cwd and (f[2] is None or at > f[2] or (at == f[2] and cwd > f[3])):
        f[2], f[3] = at, cwd
    if (
        model
        and model != SYNTHETIC
        and (f[4] is None or at > f[4] or (at == f[4] and model > f[5]))
    ):
        f[4], f[5] = at, model


def _metadata(session: str, f: list) -> ThreadMetadata:
    """A session's facts in metadata.json terms, for the shared redact stage
    (which turns the workspace path into a key and a label)."""
    return ThreadMetadata(
        thread_id=session,
        workspace=f[3],
        provider=PROVIDER,
        model=f[5],
        created_at=_rfc3339(f[0]),
        updated_at=_rfc3339(f[1]),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _rfc3339(ms: int) -> str:
    # integer arithmetic: the redact stage parses it back to exactly `ms`
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")
