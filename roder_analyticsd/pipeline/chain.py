"""Wiring: the pure stages between the source and the writer, on anyio.

Bounded memory-object streams connect the tasks, so a slow writer holds
back the source (backpressure) and memory stays bounded. Work moves in
Batches of many lines, never one event at a time.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from roder_analyticsd.pipeline import claude_code as claude_stages
from roder_analyticsd.pipeline.attribute import attribute
from roder_analyticsd.pipeline.batch import Batch, Checkpoint
from roder_analyticsd.pipeline.project import project
from roder_analyticsd.pipeline.redact import WorkspaceLabels, redact
from roder_analyticsd.sources import claude_code
from roder_analyticsd.sources.files import FileRead, read_new_lines
from roder_analyticsd.sources.roder import decode

Stage = Callable[[Batch], Batch]
Producer = Callable[[ObjectSendStream[Batch]], Awaitable[None]]
Consumer = Callable[[ObjectReceiveStream[Batch]], Awaitable[None]]

STREAM_BUFFER = 4


def _by_agent(roder: Stage, claude: Stage) -> Stage:
    """One stage of the chain, for whichever source the batch came from."""

    def stage(batch: Batch) -> Batch:
        return claude(batch) if batch.agent == claude_code.AGENT else roder(batch)

    stage.__name__ = roder.__name__
    return stage


_attribute = _by_agent(attribute, claude_stages.attribute)
_project = _by_agent(project, claude_stages.project)


def _decode_in_file_order() -> Stage:
    """The decode stage, carrying the decoder's state from each chunk of a
    file to the next (a read's chunks come in file order, and this stage
    sees them one by one in that order). The decode itself stays pure:
    state in with the batch, out with its checkpoints."""
    ends: dict[str, str | None] = {}  # file key -> the state its last chunk ended in

    def stage(batch: Batch) -> Batch:
        if batch.agent != claude_code.AGENT:
            return decode(batch)
        if batch.continues and batch.checkpoints:
            batch.prompts = ends.get(batch.checkpoints[0].identity.key)
        batch = claude_code.decode(batch)
        for cp in batch.checkpoints:
            ends[cp.identity.key] = cp.prompts
        return batch

    stage.__name__ = decode.__name__
    return stage


def stages(workspace_labels: WorkspaceLabels) -> list[Stage]:
    """A fresh chain for one pass over some files (its decode keeps state)."""
    return [
        _decode_in_file_order(), functools.partial(redact, mode=workspace_labels), _attribute,
        _project,
    ]  # fmt: skip


def run_stages(batch: Batch, chain: Sequence[Stage]) -> Batch:
    for stage in chain:
        batch = stage(batch)
    return batch


def stage_files(
    paths: list[Path],
    name: Callable[[Path], str],
    checkpoints: dict[str, Checkpoint],
    workspace_labels: WorkspaceLabels,
    agent: str = "roder",
) -> tuple[list[Batch], list[FileRead]]:
    """Source and every stage for a slice of one agent's files, in one call.

    This is what a worker process runs for a backfill (see live/ingest.py): it
    takes file paths and gives back only the compact rows, so neither raw
    lines nor events cross the process boundary. `name` is how a file is
    named in checkpoints and reports (picklable: a module-level function or
    a functools.partial of one).
    """
    chain = stages(workspace_labels)
    staged: list[Batch] = []
    outcomes: list[FileRead] = []
    # The cyclic collector is paused for the slice: what the stages build
    # (tuples, lists, dicts of rows) holds no cycles, and its passes over
    # the growing rows cost 10-20% of the slice's CPU.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for path in paths:
            outcome = FileRead(name(path))
            for batch in read_new_lines(path, path.parent, checkpoints, outcome):
                batch.agent = agent
                staged.append(run_stages(batch, chain))
            outcomes.append(outcome)
    finally:
        if collecting:
            gc.enable()
    return staged, outcomes


async def _run_stage(
    stage: Stage, inbox: ObjectReceiveStream[Batch], outbox: ObjectSendStream[Batch]
) -> None:
    async with inbox, outbox:
        async for batch in inbox:
            await outbox.send(stage(batch))


async def run_pipeline(produce: Producer, chain: Sequence[Stage], consume: Consumer) -> None:
    """Run source → each stage → sink as tasks until the source is done.

    If the sink stops early (strict mode) the other tasks are cancelled; a
    single failure is re-raised as itself rather than as an ExceptionGroup.
    """
    try:
        async with anyio.create_task_group() as tg:
            send, recv = anyio.create_memory_object_stream[Batch](STREAM_BUFFER)
            tg.start_soon(produce, send)
            for stage in chain:
                next_send, next_recv = anyio.create_memory_object_stream[Batch](STREAM_BUFFER)
                tg.start_soon(_run_stage, stage, recv, next_send)
                recv = next_recv
            try:
                await consume(recv)
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # a stage whose downstream died reports a broken stream: that is an
        # echo of the real failure, which is what the caller should see
        real = [
            exc
            for exc in _leaves(group)
            if not isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError)
        ]
        if len(real) == 1:
            raise real[0] from None
        raise


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    """The exceptions of a group and of the groups inside it (a stage may
    run a task group of its own)."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
