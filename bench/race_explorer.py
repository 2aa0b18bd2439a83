"""Race explorer: random schedules of container operations against reloads.

    python -m bench.race_explorer --schedules 10000 --seed 1 [--store dockyard]

Runs the schedules of bench.race_schedules through bench.race_run, under
`trio.testing.MockClock(autojump_threshold=0)`, split over worker
processes, and writes the counts to bench/results/race_explorer.json and
.md.

The real WrapperStore must show no violation. ReplacingWrapperStore, which
deletes the wrapper directory on every reload as dockerd 20.10 did, is the
negative control and must show some: a run where it shows none explored
too little to mean anything.

By default the daemon's worker-thread calls run inline, see
`bench.race_run.inline_worker_threads`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from bench.race_run import (
    STORES,
    Tally,
    default_parent,
    inline_worker_threads,
    run_schedules,
)
from bench.results import markdown_table, write_results

THREAD_MODES = ("inline", "worker")


def explore_chunk(
    store: str, seed: int, indices: range, parent: str | None, threads: str
) -> Tally:
    """Run schedules in a new temporary workspace, in one trio.run; blocking."""
    with tempfile.TemporaryDirectory(prefix="race-explorer-", dir=parent) as root:
        patching = (
            inline_worker_threads() if threads == "inline" else contextlib.nullcontext()
        )
        with patching:
            return trio.run(
                run_schedules,
                store,
                seed,
                indices,
                Path(root),
                clock=trio.testing.MockClock(autojump_threshold=0),
            )


def split(indices: range, parts: int) -> list[range]:
    """Split `indices` into at most `parts` contiguous ranges of near-equal size."""
    parts = max(1, min(parts, len(indices)))
    size, extra = divmod(len(indices), parts)
    chunks = []
    start = indices.start
    for part in range(parts):
        stop = start + size + (1 if part < extra else 0)
        chunks.append(range(start, stop))
        start = stop
    return chunks


@attrs.frozen
class StoreRun:
    """One store's counts, and the wall time its schedules took."""

    store: str
    tally: Tally
    wall_seconds: float


def explore(
    stores: Sequence[str],
    *,
    seed: int,
    indices: range,
    workers: int,
    parent: str | None,
    threads: str,
) -> list[StoreRun]:
    """Run `indices` against each store in turn, split over `workers` processes."""
    runs = []
    chunks = split(indices, workers)
    with contextlib.ExitStack() as stack:
        pool = None
        if len(chunks) > 1:
            pool = stack.enter_context(
                concurrent.futures.ProcessPoolExecutor(max_workers=len(chunks))
            )
        for store in stores:
            started = time.perf_counter()
            if pool is None:
                tallies = [
                    explore_chunk(store, seed, chunk, parent, threads)
                    for chunk in chunks
                ]
            else:
                futures = [
                    pool.submit(explore_chunk, store, seed, chunk, parent, threads)
                    for chunk in chunks
                ]
                tallies = [future.result() for future in futures]
            total = Tally()
            for tally in tallies:
                total.add(tally)
            runs.append(StoreRun(store, total, time.perf_counter() - started))
    return runs


def _table(runs: Sequence[StoreRun], workers: int) -> str:
    header = (
        "store",
        "schedules",
        "operations",
        "rejected",
        "runtime calls",
        "calls through an older generation",
        "violations",
        "schedules with violations",
        "wall time (s)",
        "CPU ms per schedule",
    )
    rows = [
        (
            run.store,
            run.tally.schedules,
            run.tally.operations,
            run.tally.rejected,
            run.tally.runtime_calls,
            run.tally.older_generation_calls,
            run.tally.violations,
            run.tally.violating_schedules,
            f"{run.wall_seconds:.1f}",
            f"{run.tally.cpu_seconds * 1000 / max(1, run.tally.schedules):.2f}",
        )
        for run in runs
    ]
    total = sum(run.wall_seconds for run in runs)
    return markdown_table(header, rows) + (
        f"\nWall time for all stores: {total:.1f} s with {workers} worker "
        "processes. CPU time is summed over the workers.\n"
    )


def _parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.race_explorer",
        description="Run random schedules of container operations and reloads "
        "against the daemon core in virtual time and count lock-in violations.",
    )
    parser.add_argument(
        "--schedules", type=int, default=10_000, help="number of schedules per store"
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the schedules and delays"
    )
    parser.add_argument(
        "--first",
        type=int,
        default=0,
        help="index of the first schedule; with --schedules 1 this reruns one "
        "schedule with the same operations and delays",
    )
    parser.add_argument(
        "--store",
        choices=sorted(STORES),
        action="append",
        help="wrapper store to run (repeatable); default: both",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes; default: one per core",
    )
    parser.add_argument(
        "--threads",
        choices=THREAD_MODES,
        default="inline",
        help="run the daemon's worker-thread calls inline (default), or in real "
        "trio worker threads (slower; see inline_worker_threads)",
    )
    parser.add_argument(
        "--tmp-dir",
        default=default_parent(),
        help="parent of the temporary workspaces; default: /dev/shm when present",
    )
    parser.add_argument(
        "--log-level",
        default="CRITICAL",
        help="level of the daemon's log lines on stderr; default CRITICAL, "
        "because the replacing store makes the daemon log its failures",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the table only; write no result files",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse_arguments(argv)
    logging.basicConfig(level=arguments.log_level.upper())
    stores = arguments.store or list(STORES)
    indices = range(arguments.first, arguments.first + arguments.schedules)
    runs = explore(
        stores,
        seed=arguments.seed,
        indices=indices,
        workers=arguments.workers,
        parent=arguments.tmp_dir,
        threads=arguments.threads,
    )
    table = _table(runs, min(arguments.workers, arguments.schedules))
    print(table)
    for run in runs:
        for kind, count in run.tally.rejection_kinds.most_common():
            print(f"{run.store}: rejected {count} x {kind}")
        for kind, count in run.tally.violation_kinds.most_common():
            print(f"{run.store}: violated {count} x {kind}")
        for example in run.tally.examples:
            print(f"{run.store}: example {example}")
    if not arguments.no_write:
        for path in write_results("race_explorer", _document(arguments, runs), table):
            print(f"wrote {path}")
    return _exit_status(runs)


def _document(
    arguments: argparse.Namespace, runs: Sequence[StoreRun]
) -> dict[str, Any]:
    stores = {}
    for run in runs:
        counts = attrs.asdict(run.tally)
        counts["examples"] = [attrs.asdict(example) for example in run.tally.examples]
        counts["cpu_seconds"] = round(run.tally.cpu_seconds, 3)
        stores[run.store] = {**counts, "wall_seconds": round(run.wall_seconds, 3)}
    return {
        "seed": arguments.seed,
        "first": arguments.first,
        "schedules": arguments.schedules,
        "workers": arguments.workers,
        "threads": arguments.threads,
        "tmp_dir": arguments.tmp_dir,
        "wall_seconds": round(sum(run.wall_seconds for run in runs), 3),
        "stores": stores,
    }


def _exit_status(runs: Sequence[StoreRun]) -> int:
    """Return 1 if the real store broke the lock-in or the control never did."""
    status = 0
    for run in runs:
        if run.store == "dockyard" and run.tally.violations:
            print("FAILED: the dockyard store broke the lock-in", file=sys.stderr)
            status = 1
        if run.store == "replacing" and not run.tally.violations:
            print(
                "FAILED: the replacing store showed no violation, so these "
                "schedules did not exercise the race; raise --schedules",
                file=sys.stderr,
            )
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
