"""Generate a Claude Code tree (`<root>/projects/…`) of about N lines.

The shapes of `claude-code.md` and of the sample tree: streamed responses
split over several lines with the same ids (earlier ones with partial
output), tool_use → tool_result pairs, prompts, subagent sidechain files,
side-question replays, resumed sessions replaying earlier lines,
`<synthetic>` lines, 1-hour cache writes, a few prompts over 200k tokens,
sessions crossing midnight. Deterministic for a seed. Only cases where the
daemon and ccusage agree by design (claude-code.md) are generated, so
their tokens per day must be identical.

    python bench/gen_claude.py ROOT --lines 200000
"""

from __future__ import annotations

import argparse
import json
import random
import uuid
from pathlib import Path

MODELS = (
    "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5-20251001",
    "claude-opus-4-5-20251101",
    "claude-opus-4-1-20250805",
)
TOOLS = ("Bash", "Read", "Edit", "Write", "Grep", "Glob", "TodoWrite", "WebFetch")
BASE_MS = 1_777_593_600_000  # 2026-05-01T00:00:00Z
ID_CHARS = "abcdefghijkmnopqrstuvwxyzABCDEFGH0123456789"
FILLER = "lorem ipsum dolor sit amet " * 8  # message text: the bulk of a real line


def _stamp(ms: int) -> str:
    from datetime import UTC, datetime, timedelta

    t = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class Session:
    def __init__(self, rng: random.Random, project: str, session_id: str, start_ms: int):
        self.rng = rng
        self.cwd = "/home/dev/" + project
        self.id = session_id
        self.at = start_ms
        self.parent: str | None = None
        self.lines: list[dict] = []

    def _base(self, kind: str, sidechain: bool = False) -> dict:
        line_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        line = {
            "parentUuid": self.parent, "isSidechain": sidechain, "userType": "external",
            "cwd": self.cwd, "sessionId": self.id, "version": "2.0.37", "gitBranch": "main",
            "type": kind, "uuid": line_id, "timestamp": _stamp(self.at),
        }  # fmt: skip
        self.parent = line_id
        return line

    def prompt(self) -> None:
        line = self._base("user")
        line["message"] = {"role": "user", "content": "task: " + FILLER}
        self.lines.append(line)

    def call(self, model: str, sidechain: bool = False, tool: bool = True) -> list[str]:
        """One API call streamed as 1-3 lines; returns its tool_use ids."""
        rng = self.rng
        msg_id = "msg_01" + "".join(
            rng.choices("abcdefghijkmnopqrstuvwxyzABCDEFGH0123456789", k=22)
        )
        req_id = "req_011C" + "".join(rng.choices("abcdefghijkmnopqrstuvwxyz0123456789", k=20))
        big = rng.random() < 0.01
        cache_read = rng.randint(210_000, 260_000) if big else rng.randint(0, 120_000)
        five = rng.choice((0, 0, 480, 1500, 9000))
        hour = rng.choice((0, 0, 0, 3000))
        usage = {
            "input_tokens": rng.randint(1, 400), "cache_creation_input_tokens": five + hour,
            "cache_read_input_tokens": cache_read,
            "cache_creation": {"ephemeral_5m_input_tokens": five,
                               "ephemeral_1h_input_tokens": hour},
            "output_tokens": 0, "service_tier": "standard",
        }  # fmt: skip
        output = rng.randint(20, 3000)
        blocks: list[dict] = [{"type": "text", "text": FILLER}]
        tools = []
        if tool:
            for _ in range(rng.choice((1, 1, 2))):
                tool_id = "toolu_01" + uuid.UUID(int=rng.getrandbits(128)).hex[:22]
                tools.append(tool_id)
                blocks.append({"type": "tool_use", "id": tool_id, "name": rng.choice(TOOLS),
                               "input": {"command": FILLER}})  # fmt: skip
        for n, block in enumerate(blocks):
            line = self._base("assistant", sidechain)
            last = n == len(blocks) - 1
            part = dict(usage, output_tokens=output if last else output * (n + 1) // 4 + 1)
            line["message"] = {
                "id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": [block], "stop_reason": ("tool_use" if tools else "end_turn")
                if last else None, "stop_sequence": None, "usage": part,
            }  # fmt: skip
            line["requestId"] = req_id
            self.lines.append(line)
            self.at += rng.randint(10, 80)
        return tools

    def results(self, tools: list[str], sidechain: bool = False) -> None:
        for tool_id in tools:
            self.at += self.rng.randint(500, 40_000)
            line = self._base("user", sidechain)
            line["message"] = {"role": "user", "content": [{
                "tool_use_id": tool_id, "type": "tool_result", "content": FILLER,
                "is_error": self.rng.random() < 0.05}]}  # fmt: skip
            line["toolUseResult"] = {"stdout": FILLER, "stderr": "", "interrupted": False}
            self.lines.append(line)

    def synthetic(self) -> None:
        line = self._base("assistant")
        line["message"] = {
            "id": "msg_" + uuid.UUID(int=self.rng.getrandbits(128)).hex, "type": "message",
            "role": "assistant", "model": "<synthetic>",
            "content": [{"type": "text", "text": "No response requested."}],
            "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0},
        }  # fmt: skip
        self.lines.append(line)


def _dump(path: Path, lines: list[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for line in lines:
            fh.write(json.dumps(line, separators=(",", ":")))
            fh.write("\n")
    return len(lines)


def generate(root: Path, target_lines: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    written = 0
    number = 0
    previous: Session | None = None
    while written < target_lines:
        number += 1
        project = f"proj{number % 23}"
        session_id = str(uuid.UUID(int=rng.getrandbits(128)))
        start = BASE_MS + rng.randint(0, 60 * 86_400_000)
        s = Session(rng, project, session_id, start)
        model = rng.choice(MODELS)
        replay: list[dict] = []
        if previous is not None and rng.random() < 0.1:
            replay = previous.lines[: min(len(previous.lines), rng.randint(3, 12))]
        for _ in range(rng.randint(5, 60)):
            s.prompt()
            s.at += rng.randint(1000, 9000)
            for _ in range(rng.randint(1, 4)):
                tools = s.call(model)
                s.results(tools)
            if rng.random() < 0.05:
                s.synthetic()
            s.at += rng.randint(60_000, 3_600_000)
        project_dir = root / "projects" / f"-home-dev-{project}"
        written += _dump(project_dir / f"{session_id}.jsonl", replay + s.lines)
        if rng.random() < 0.3:  # a subagent (Task tool) with its own file
            sub = Session(rng, project, session_id, s.at)
            for _ in range(rng.randint(2, 8)):
                tools = sub.call(rng.choice(MODELS), sidechain=True)
                sub.results(tools, sidechain=True)
            agent = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
            written += _dump(project_dir / session_id / "subagents" / f"agent-{agent}.jsonl",
                             sub.lines)  # fmt: skip
        if rng.random() < 0.05:  # a side question replaying the parent's last call
            parent_call = next((ln for ln in reversed(s.lines) if ln["type"] == "assistant"
                                and ln["message"]["model"] != "<synthetic>"), None)  # fmt: skip
            if parent_call is not None:
                copy = json.loads(json.dumps(parent_call))
                copy["isSidechain"] = True
                copy["requestId"] = "req_011Cside" + uuid.UUID(int=rng.getrandbits(128)).hex[:12]
                aside = Session(rng, project, session_id, s.at + 1000)
                aside.call(model, sidechain=True, tool=False)
                written += _dump(
                    project_dir / session_id / "subagents" / f"aside_question-{number:08x}.jsonl",
                    [copy, *aside.lines],
                )
        previous = s
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(generate(args.root, args.lines, args.seed))


if __name__ == "__main__":
    main()
