"""A job processor in its own process, whose handler has memoized steps: ``URL DIR [options]``.

Used by tests/test_jobs_steps.py to prove that a step's stored result survives the
worker being killed: the handler's first step (``ctx.run_step("one", ...)``, a plain
function, logged to DIR/one.log) returns a result; with ``--hang`` the process then
prints ``ready`` and blocks forever (the test kills it). Without, its second step
(logged to DIR/two.log) gets the first step's result, and the job's last line goes to
DIR/completed.log.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.lowlevel

import corral
from corral import jobs
from jobs_worker import append

Handler = Callable[[jobs.JobContext], Awaitable[None]]


def memo_handler(directory: Path, *, hang: bool = False) -> Handler:
    """Step one (a plain function: in a thread), (hang), step two with its result."""

    def one(where: str, *, scale: int) -> dict[str, object]:
        append(directory / "one.log", where)
        return {"where": where, "n": 3 * scale}

    async def two(first: dict[str, object], where: str) -> str:
        await anyio.lowlevel.checkpoint()
        append(directory / "two.log", f"{where} got {first['where']} n={first['n']}")
        return "uploaded"

    async def handler(ctx: jobs.JobContext) -> None:
        where = f"{ctx.job.id} attempt={ctx.attempt} worker={ctx.worker}"
        first = await ctx.run_step("one", one, where, scale=2)
        if hang:
            print("ready", flush=True)  # step one's result is committed
            await anyio.sleep_forever()
        second = await ctx.run_step("two", two, first, where)
        append(directory / "completed.log", f"{where} {second}")

    return handler


async def main(url: str, directory: Path, hang: bool) -> None:
    config = jobs.ProcessorConfig(lease_seconds=1, poll_interval=0.1)
    async with corral.connect(url) as db:
        handler = memo_handler(directory, hang=hang)
        processor = jobs.Processor(db, handler, config=config, name="victim")
        await processor.run(until_idle=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="steps_worker.py")
    parser.add_argument("url")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args(sys.argv[1:])
    anyio.run(main, args.url, args.directory, args.hang, backend=args.backend)
