"""Reload cost: how long one reload takes, by runtimes configured and changed.

    python -m bench.reload_cost [--repetitions 20] [--counts 10 100 1000 5000]

Each case configures `count` runtimes in daemon.json, all with runtimeArgs,
and starts the real reload path on it: ConfigSource reading the file,
ReloadActor, and the real WrapperStore writing wrapper scripts into a
temporary directory. Each repetition rewrites daemon.json with none, one
or all of the runtimes changed, then times `ReloadActor.reload()` from the
request to the outcome. That covers reading and decoding the file,
validating, diffing and deriving the runtimes, which writes and fsyncs a
new wrapper for each changed runtime. It also covers publishing the
snapshot and emitting the reload event. A changed
runtime gets arguments it never had before, so each change writes a new
wrapper file, as a real edit of daemon.json would.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.config_actor import ConfigActor
from actors.events import EventBus
from actors.reload_actor import ConfigSource, ReloadActor, build_initial_snapshot
from actors.wrappers import WrapperStore
from bench.results import markdown_table, write_results
from messages.config import DaemonFlags
from messages.wrapper import WRAPPER_DIRECTORY

COUNTS = (10, 100, 1_000, 5_000)
NONE, ONE, ALL = "none", "one", "all"
CHANGED = (NONE, ONE, ALL)
# Reloads run before the timed ones, so that first-use costs (imports,
# cattrs hook generation) are not counted.
WARMUP = 1


@attrs.frozen
class Case:
    """The latencies of one (runtimes configured, runtimes changed) case."""

    configured: int
    changed: str
    seconds: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def p95_ms(self) -> float:
        return percentile(self.seconds, 95) * 1000


def percentile(values: Sequence[float], rank: float) -> float:
    """Return the nearest-rank percentile `rank` (0 to 100) of `values`."""
    ordered = sorted(values)
    index = max(0, math.ceil(rank / 100 * len(ordered)) - 1)
    return ordered[index]


def runtime_name(number: int) -> str:
    return f"runtime-{number:05d}"


def daemon_json(binary: Path, count: int, revisions: Sequence[int]) -> str:
    """Return daemon.json for `count` runtimes, runtime i at `revisions[i]`."""
    runtimes = {
        runtime_name(number): {
            "path": str(binary),
            "runtimeArgs": [
                "--root",
                f"/run/runtime {number}",
                f"--log=/var/log/runtime-{number}.{revisions[number]}.log",
            ],
        }
        for number in range(count)
    }
    return json.dumps({"runtimes": runtimes}, indent=2)


async def measure(directory: Path, count: int, changed: str, repetitions: int) -> Case:
    """Time `repetitions` reloads of `count` runtimes with `changed` of them new."""
    binary = directory / "bin" / "runtime"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    config_file = directory / "daemon.json"
    revisions = [0] * count
    config_file.write_text(daemon_json(binary, count, revisions))
    flags = DaemonFlags(
        data_root=str(directory / "data"), exec_root=str(directory / "exec")
    )
    source = ConfigSource(path=config_file, flags=flags)
    wrappers = WrapperStore(directory / "data" / WRAPPER_DIRECTORY)

    def lookup(name: str) -> str | None:
        return str(binary)

    snapshot = await build_initial_snapshot(source, wrappers, lookup)
    reloads = ReloadActor(
        config=ConfigActor(snapshot),
        source=source,
        wrappers=wrappers,
        events=EventBus(),
        lookup=lookup,
    )
    seconds = []
    async with trio.open_nursery() as nursery:
        await nursery.start(reloads.run)
        for repetition in range(WARMUP + repetitions):
            changing = {NONE: 0, ONE: 1, ALL: count}[changed]
            for number in range(changing):
                revisions[number] = repetition + 1
            config_file.write_text(daemon_json(binary, count, revisions))
            started = time.perf_counter()
            outcome = await reloads.reload()
            elapsed = time.perf_counter() - started
            if not outcome.ok:
                raise RuntimeError(f"reload failed: {outcome.error}")
            if repetition >= WARMUP:
                seconds.append(elapsed)
        nursery.cancel_scope.cancel()
    return Case(configured=count, changed=changed, seconds=tuple(seconds))


async def measure_all(
    counts: Sequence[int], repetitions: int, parent: str | None
) -> list[Case]:
    cases = []
    for count in counts:
        for changed in CHANGED:
            with tempfile.TemporaryDirectory(prefix="reload-cost-", dir=parent) as root:
                case = await measure(Path(root), count, changed, repetitions)
            print(
                f"{count:>6} runtimes, {changed:>4} changed: median "
                f"{case.median_ms:9.2f} ms, p95 {case.p95_ms:9.2f} ms",
                flush=True,
            )
            cases.append(case)
    return cases


def _table(cases: Sequence[Case]) -> str:
    header = ["runtimes configured"]
    for changed in CHANGED:
        header += [f"{changed} changed: median (ms)", f"{changed} changed: p95 (ms)"]
    by_count: dict[int, dict[str, Case]] = {}
    for case in cases:
        by_count.setdefault(case.configured, {})[case.changed] = case
    rows = []
    for count, row_cases in by_count.items():
        row: list[object] = [count]
        for changed in CHANGED:
            case = row_cases[changed]
            row += [f"{case.median_ms:.2f}", f"{case.p95_ms:.2f}"]
        rows.append(row)
    return markdown_table(header, rows)


def _document(arguments: argparse.Namespace, cases: Sequence[Case]) -> dict[str, Any]:
    return {
        "repetitions": arguments.repetitions,
        "warmup": WARMUP,
        "tmp_dir": arguments.tmp_dir or tempfile.gettempdir(),
        "cases": [
            {
                "configured": case.configured,
                "changed": case.changed,
                "median_ms": round(case.median_ms, 3),
                "p95_ms": round(case.p95_ms, 3),
                "seconds": [round(value, 6) for value in case.seconds],
            }
            for case in cases
        ],
    }


def _parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reload_cost",
        description="Time reloads through the real ReloadActor and WrapperStore "
        "for several numbers of configured and changed runtimes.",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=20,
        help="timed reloads per case (after one warm-up reload); default 20",
    )
    parser.add_argument(
        "--counts",
        type=int,
        nargs="+",
        default=list(COUNTS),
        help="numbers of configured runtimes; default: 10 100 1000 5000",
    )
    parser.add_argument(
        "--tmp-dir",
        default=None,
        help="parent of the temporary directories; default: the system's "
        "temporary directory, so wrappers are fsynced to a real file system",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the results only; write no result files",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse_arguments(argv)
    cases = trio.run(
        measure_all, arguments.counts, arguments.repetitions, arguments.tmp_dir
    )
    table = _table(cases)
    print(table)
    if not arguments.no_write:
        for path in write_results("reload_cost", _document(arguments, cases), table):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
