"""Stress run: many real containers on runc while a reload storm runs.

    python -m bench.stress [--containers 100] [--reloads 50] [--execs N] [--runs 1]

One real daemon runs in this process through the embedding API
(`open_daemon`), with its data root and exec root in a temporary
directory and the busybox image imported. It has three runtimes: the
built-in `runc`, and `fast` and `spare`, both runc with `runtimeArgs`.

Phase A (baseline): start `--containers` containers running
`sleep 100000`, at most `--concurrency` operations at a time, spread
over `runc`, `fast` and `spare`, then exec `true` into each. Phase B
(storm): the same with a fresh set of containers, plus `--execs` execs
into the containers of phase A, while `--reloads` reloads rewrite
daemon.json and call `daemon.reload()`. The reloads cycle through five
changes: `fast`'s arguments changed, `fast`'s arguments dropped, `spare`
removed, `spare` re-added (and `fast`'s arguments restored), and the
default runtime switched between `runc` and `fast`. They are spaced
evenly over the duration of phase A, so that the storm lasts about as
long as the work it disturbs. Containers of phase B use `fast` or the
default runtime, never `spare`, so that no start is rejected because a
reload removed its runtime.

At the end every container of both phases gets an exec of `true`, a stop
with a grace period of `--stop-grace` seconds and a remove. A failure is
any operation that raised or returned an unexpected exit code. A
container is unmanageable when its final exec, stop or remove failed, or
when its stop took longer than the grace period plus STOP_SLACK_SECONDS.

The peak resident set size is VmHWM of this process, which runs the
daemon. It counts the bench's own data too (latency lists, the busybox
tarball), but not matplotlib, which is imported only after it is read.
`--runs` repeats everything on a new daemon in the same process and pools
the latencies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.busybox import BUSYBOX_CHANGES, build_busybox_tar
from actors.daemon import Daemon, open_daemon
from bench.reload_cost import percentile
from bench.results import RESULTS_DIRECTORY, markdown_table, write_results
from messages.config import DaemonFlags
from messages.execspec import ExecOptions
from messages.requests import CreateContainer

logger = logging.getLogger(__name__)

SLEEP_COMMAND = ("sleep", "100000")
EXEC_COMMAND = ("true",)
# Runtime names in daemon.json. `spare` is removed and re-added by the storm.
FAST, SPARE, BUILTIN = "fast", "spare", "runc"
PHASE_A_RUNTIMES = (BUILTIN, FAST, SPARE)
# "" is the default runtime, which the storm switches between runc and fast.
PHASE_B_RUNTIMES = ("", FAST)
ARGUMENTS_TEXT = ("--log-format", "text")
ARGUMENTS_JSON = ("--log-format", "json")
STORM_CHANGES = (
    "arguments changed",
    "arguments dropped",
    "runtime removed",
    "runtime re-added",
    "default runtime switched",
)
# Hang guard for one daemon call, not a measurement: a start or exec
# normally takes well under a second.
OPERATION_TIMEOUT_SECONDS = 120.0
# Time a stop may take beyond its grace period before the container counts
# as unmanageable: SIGKILL, the wait for runc to delete the container and
# exit, and the unmount, with up to FINAL_CONCURRENCY stops at once on a
# loaded machine.
# The limit is an estimate: on 2 cores the slowest stop of 1,000 took 0.4 s
# beyond its grace period.
STOP_SLACK_SECONDS = 5.0
# Stops mostly wait out the grace period, so the final pass runs more of
# them at once than the start and exec phases do.
FINAL_CONCURRENCY = 50
# The targets this run is measured against.
START_P99_RATIO_TARGET = 1.2
RSS_TARGET_MB = 100.0
MIB_IN_MB = 1.048576
# Hang guard for the runc and umount calls of the cleanup.
CLEANUP_TIMEOUT_SECONDS = 60
PLOT_NAME = "stress_latency.png"
# The daemon's shutdown timeout, which matters only when a run is
# interrupted: the daemon then stops the containers left running, and
# `sleep` as PID 1 ignores SIGTERM, so each waits this long for SIGKILL.
SHUTDOWN_TIMEOUT_SECONDS = 2
# Exit status after Ctrl-C, as shells report SIGINT.
INTERRUPTED_STATUS = 130


@attrs.define
class Storm:
    """The daemon.json the reload storm writes, one change at a time."""

    fast_arguments: tuple[str, ...] = ARGUMENTS_TEXT
    spare_present: bool = True
    default_runtime: str = BUILTIN

    def apply(self, change: str) -> None:
        if change == "arguments changed":
            changed = self.fast_arguments != ARGUMENTS_JSON
            self.fast_arguments = ARGUMENTS_JSON if changed else ARGUMENTS_TEXT
        elif change == "arguments dropped":
            self.fast_arguments = ()
        elif change == "runtime removed":
            self.spare_present = False
        elif change == "runtime re-added":
            self.spare_present = True
            self.fast_arguments = ARGUMENTS_TEXT
        elif change == "default runtime switched":
            self.default_runtime = FAST if self.default_runtime == BUILTIN else BUILTIN
        else:
            raise ValueError(
                f"invalid storm change {change!r}; use one of {STORM_CHANGES}"
            )

    def daemon_json(self, runc: str) -> str:
        runtimes: dict[str, Any] = {
            FAST: {"path": runc, "runtimeArgs": list(self.fast_arguments)}
        }
        if self.spare_present:
            runtimes[SPARE] = {"path": runc, "runtimeArgs": list(ARGUMENTS_JSON)}
        return json.dumps(
            {
                "runtimes": runtimes,
                "default-runtime": self.default_runtime,
                "shutdown-timeout": SHUTDOWN_TIMEOUT_SECONDS,
            }
        )


@attrs.define
class Tally:
    """Latencies in seconds by kind, failures and resource use, of all runs."""

    latencies: dict[str, list[float]] = attrs.field(factory=dict)
    failures: list[str] = attrs.field(factory=list)
    unmanageable: dict[str, str] = attrs.field(factory=dict)
    reload_changes: list[str] = attrs.field(factory=list)
    # Phase B starts during which at least one reload committed.
    overlapping_starts: int = 0
    # Seconds by phase, summed over the runs.
    wall_seconds: dict[str, float] = attrs.field(factory=dict)
    daemon_cpu_seconds: dict[str, float] = attrs.field(factory=dict)
    children_cpu_seconds: dict[str, float] = attrs.field(factory=dict)
    reload_intervals: list[float] = attrs.field(factory=list)
    # MiB by label, one value per run.
    rss_mib: dict[str, list[float]] = attrs.field(factory=dict)
    # The daemon's child processes with phase A running, one entry per run.
    children_memory: list[dict[str, float]] = attrs.field(factory=list)

    def add(self, kind: str, seconds: float) -> None:
        self.latencies.setdefault(kind, []).append(seconds)

    def fail(self, operation: str, subject: str, error: BaseException | str) -> None:
        message = f"{operation} {subject}: {error!r}"
        logger.error("%s", message)
        self.failures.append(message)

    def note_rss(self, label: str, field: str) -> float:
        value = memory_mib(field)
        self.rss_mib.setdefault(label, []).append(value)
        return value


@contextlib.contextmanager
def measured(tally: Tally, phase: str) -> Iterator[None]:
    """Add the wall time and CPU time of the block to `phase`.

    Children's CPU counts only processes that were waited for: the runc
    and wrapper processes, not the containers' processes.
    """
    wall = time.perf_counter()
    daemon = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield
    daemon_after = resource.getrusage(resource.RUSAGE_SELF)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for totals, before, after in (
        (tally.daemon_cpu_seconds, daemon, daemon_after),
        (tally.children_cpu_seconds, children, children_after),
    ):
        used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        totals[phase] = totals.get(phase, 0.0) + used
    tally.wall_seconds[phase] = (
        tally.wall_seconds.get(phase, 0.0) + time.perf_counter() - wall
    )


def summary_ms(values: Sequence[float]) -> dict[str, float | int]:
    """Return count, p50, p95, p99 and max of `values` (seconds) in ms."""
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50": round(percentile(values, 50) * 1000, 2),
        "p95": round(percentile(values, 95) * 1000, 2),
        "p99": round(percentile(values, 99) * 1000, 2),
        "max": round(max(values) * 1000, 2),
    }


def read_status(path: Path) -> dict[str, str]:
    """Return the fields of a /proc/<pid>/status file, by name."""
    fields = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def kib_to_mib(value: str) -> float:
    """Convert a status value such as "1024 kB" to MiB."""
    return int(value.split()[0]) / 1024


def memory_mib(field: str) -> float:
    """Return a field of /proc/self/status, such as VmHWM, in MiB."""
    value = read_status(Path("/proc/self/status")).get(field)
    if value is None:
        raise RuntimeError(f"/proc/self/status has no {field} line")
    return kib_to_mib(value)


def child_memory_mib() -> tuple[int, float, float]:
    """Return the count, RssAnon and VmRSS in MiB of this process's children.

    With the daemon in this process, those are the foreground `runc run`
    processes, one per running container, and any runc exec running.
    Their file pages (the runc binary) are shared, so VmRSS counts them
    once per process while the machine keeps one copy.
    """
    count, anonymous, resident = 0, 0.0, 0.0
    own = os.getpid()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = read_status(status)
        except OSError:
            # The process exited while the directory was listed.
            continue
        if fields.get("PPid") != str(own):
            continue
        count += 1
        anonymous += kib_to_mib(fields.get("RssAnon", "0 kB"))
        resident += kib_to_mib(fields.get("VmRSS", "0 kB"))
    return count, anonymous, resident


async def chunks(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    """Yield `data` in pieces of `size` bytes, the form import_image reads."""
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


@attrs.define
class Run:
    """One stress run: the daemon, its daemon.json and what was measured."""

    daemon: Daemon
    config_file: Path
    runc: str
    limiter: trio.CapacityLimiter
    tally: Tally
    storm: Storm
    # Container ids by phase, in the order their starts finished.
    started: dict[str, list[str]] = attrs.field(factory=dict)
    # (begin, end) of each timed phase B start, and the commit time of each
    # reload, on the perf_counter clock.
    storm_start_spans: list[tuple[float, float]] = attrs.field(factory=list)
    reload_ends: list[float] = attrs.field(factory=list)

    async def start_one(self, phase: str, number: int, runtime: str) -> None:
        request = CreateContainer(
            image="busybox",
            name=f"stress-{phase}-{number:04d}",
            cmd=SLEEP_COMMAND,
            runtime=runtime,
        )
        async with self.limiter:
            began = time.perf_counter()
            try:
                with trio.fail_after(OPERATION_TIMEOUT_SECONDS):
                    record = await self.daemon.create_container(request)
                    created = time.perf_counter()
                    await self.daemon.start_container(record.id)
            except Exception as error:
                self.tally.fail("start", request.name, error)
                return
            ended = time.perf_counter()
        self.tally.add(f"{phase}:create", created - began)
        self.tally.add(f"{phase}:start", ended - began)
        if phase == "B":
            self.storm_start_spans.append((began, ended))
        self.started.setdefault(phase, []).append(record.id)
        await self.exec_one(f"{phase}:exec", record.id)

    async def exec_one(self, kind: str, container_id: str) -> bool:
        async with self.limiter:
            began = time.perf_counter()
            try:
                with trio.fail_after(OPERATION_TIMEOUT_SECONDS):
                    result = await self.daemon.exec(
                        container_id, ExecOptions(cmd=EXEC_COMMAND)
                    )
            except Exception as error:
                self.tally.fail(kind, container_id[:12], error)
                return False
            elapsed = time.perf_counter() - began
        if result.exit_code != 0:
            self.tally.fail(kind, container_id[:12], f"exit code {result.exit_code}")
            return False
        self.tally.add(kind, elapsed)
        return True

    async def run_phase(self, phase: str, count: int, runtimes: Sequence[str]) -> None:
        async with trio.open_nursery() as nursery:
            for number in range(count):
                runtime = runtimes[number % len(runtimes)]
                nursery.start_soon(self.start_one, phase, number, runtime)

    async def run_storm(self, reloads: int, interval: float) -> None:
        for index in range(reloads):
            await trio.sleep(interval)
            change = STORM_CHANGES[index % len(STORM_CHANGES)]
            self.storm.apply(change)
            await trio.Path(self.config_file).write_text(
                self.storm.daemon_json(self.runc)
            )
            began = time.perf_counter()
            try:
                with trio.fail_after(OPERATION_TIMEOUT_SECONDS):
                    outcome = await self.daemon.reload()
            except Exception as error:
                self.tally.fail("reload", change, error)
                continue
            ended = time.perf_counter()
            if not outcome.ok:
                self.tally.fail("reload", change, outcome.error or "failed")
                continue
            self.tally.add("reload", ended - began)
            self.tally.reload_changes.append(change)
            self.reload_ends.append(ended)

    def count_overlapping_starts(self) -> int:
        """Count the phase B starts during which at least one reload committed."""
        return sum(
            any(begin <= end_time <= end for end_time in self.reload_ends)
            for begin, end in self.storm_start_spans
        )

    async def run_execs(self, count: int, container_ids: Sequence[str]) -> None:
        if not container_ids:
            return
        async with trio.open_nursery() as nursery:
            for index in range(count):
                container_id = container_ids[index % len(container_ids)]
                nursery.start_soon(self.exec_one, "B:exec into A", container_id)

    async def settle(
        self, container_id: str, grace: float, limiter: trio.CapacityLimiter
    ) -> None:
        """Exec into, stop and remove a container, and mark it if a step fails."""
        if not await self.exec_one("final:exec", container_id):
            self.tally.unmanageable[container_id] = "exec failed"
        async with limiter:
            began = time.perf_counter()
            try:
                with trio.fail_after(OPERATION_TIMEOUT_SECONDS):
                    await self.daemon.stop_container(container_id, grace=grace)
            except Exception as error:
                self.tally.fail("stop", container_id[:12], error)
                self.tally.unmanageable[container_id] = "stop failed"
            elapsed = time.perf_counter() - began
            self.tally.add("final:stop", elapsed)
            if elapsed > grace + STOP_SLACK_SECONDS:
                self.tally.fail("stop", container_id[:12], f"took {elapsed:.1f} s")
                self.tally.unmanageable.setdefault(
                    container_id, f"stop took {elapsed:.1f} s"
                )
            try:
                with trio.fail_after(OPERATION_TIMEOUT_SECONDS):
                    await self.daemon.remove_container(container_id)
            except Exception as error:
                self.tally.fail("remove", container_id[:12], error)
                self.tally.unmanageable.setdefault(container_id, "remove failed")

    async def settle_all(self, grace: float) -> None:
        limiter = trio.CapacityLimiter(FINAL_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            for container_ids in self.started.values():
                for container_id in container_ids:
                    nursery.start_soon(self.settle, container_id, grace, limiter)


@attrs.frozen
class Settings:
    containers: int
    reloads: int
    execs: int
    concurrency: int
    stop_grace: float
    reload_interval: float | None
    runs: int


async def stress(settings: Settings, root: Path, tally: Tally) -> None:
    """Run both phases and the final pass on a new daemon under `root`."""
    runc = shutil.which("runc")
    if runc is None:
        raise SystemExit("runc is not on PATH; install it with `apt-get install runc`")
    config_file = root / "daemon.json"
    storm = Storm()
    config_file.write_text(storm.daemon_json(runc))
    flags = DaemonFlags(data_root=str(root / "data"), exec_root=str(root / "exec"))
    async with open_daemon(config_file, flags=flags) as daemon:
        tar = await trio.to_thread.run_sync(build_busybox_tar)
        await daemon.import_image(
            chunks(tar), reference="busybox", changes=BUSYBOX_CHANGES
        )
        del tar
        run = Run(
            daemon=daemon,
            config_file=config_file,
            runc=runc,
            limiter=trio.CapacityLimiter(settings.concurrency),
            tally=tally,
            storm=storm,
        )

        began = time.perf_counter()
        with measured(tally, "A"):
            await run.run_phase("A", settings.containers, PHASE_A_RUNTIMES)
        phase_a_seconds = time.perf_counter() - began
        rss = tally.note_rss("with phase A running", "VmRSS")
        children, anonymous, resident = child_memory_mib()
        tally.children_memory.append(
            {"processes": children, "rss_anon_mib": anonymous, "vm_rss_mib": resident}
        )
        print(
            f"phase A: {len(daemon.containers())} running after "
            f"{phase_a_seconds:.1f} s, RSS {rss:.1f} MiB",
            flush=True,
        )

        interval = settings.reload_interval
        if interval is None:
            interval = phase_a_seconds / max(1, settings.reloads)
        tally.reload_intervals.append(interval)
        began = time.perf_counter()
        with measured(tally, "B"):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.run_storm, settings.reloads, interval)
                nursery.start_soon(
                    run.run_phase, "B", settings.containers, PHASE_B_RUNTIMES
                )
                nursery.start_soon(
                    run.run_execs, settings.execs, run.started.get("A", [])
                )
        tally.overlapping_starts += run.count_overlapping_starts()
        rss = tally.note_rss("with both phases running", "VmRSS")
        print(
            f"phase B: {len(daemon.containers())} running after "
            f"{time.perf_counter() - began:.1f} s, {len(run.reload_ends)} reloads, "
            f"RSS {rss:.1f} MiB",
            flush=True,
        )

        with measured(tally, "final"):
            await run.settle_all(settings.stop_grace)
        tally.note_rss("peak (VmHWM)", "VmHWM")


def clean_up(root: Path) -> None:
    """Delete what a failed run left behind: runc containers, mounts, files."""
    runc = shutil.which("runc")
    state = root / "exec" / "runc"
    if runc is not None and state.is_dir():
        listed = subprocess.run(
            [runc, "--root", str(state), "list", "-q"],
            capture_output=True,
            text=True,
            check=False,
            timeout=CLEANUP_TIMEOUT_SECONDS,
        )
        for container_id in listed.stdout.split():
            subprocess.run(
                [runc, "--root", str(state), "delete", "--force", container_id],
                check=False,
                capture_output=True,
                timeout=CLEANUP_TIMEOUT_SECONDS,
            )
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    for target in sorted((line.split()[1] for line in mounts), reverse=True):
        if target.startswith(f"{root}/"):
            subprocess.run(
                ["umount", "--lazy", target],
                check=False,
                timeout=CLEANUP_TIMEOUT_SECONDS,
            )
    shutil.rmtree(root, ignore_errors=True)


def plot(tally: Tally, path: Path) -> None:
    """Draw the cumulative distributions of start and exec latency to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        ("start (create + start)", ("A:start", "B:start")),
        ("exec `true`", ("A:exec", "B:exec", "B:exec into A")),
    )
    labels = {
        "A:start": "phase A, no storm",
        "B:start": "phase B, during the storm",
        "A:exec": "phase A, no storm",
        "B:exec": "phase B, new containers, during the storm",
        "B:exec into A": "phase B, into phase A containers, during the storm",
    }
    for axis, (title, kinds) in zip(axes, panels, strict=True):
        for kind in kinds:
            values = sorted(value * 1000 for value in tally.latencies.get(kind, []))
            if not values:
                continue
            fractions = [(index + 1) / len(values) for index in range(len(values))]
            axis.step(values, fractions, where="post", label=labels[kind])
        axis.set_title(title)
        axis.set_xlabel("latency (ms)")
        axis.set_ylabel("fraction of operations")
        axis.set_ylim(0, 1.02)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _ratio(numerator: float | int | None, denominator: float | int | None) -> float:
    if not numerator or not denominator:
        return math.nan
    return round(numerator / denominator, 3)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


TABLE_KINDS = (
    ("A:start", "start (create + start), phase A, no storm"),
    ("B:start", "start (create + start), phase B, storm"),
    ("A:exec", "exec, phase A, no storm"),
    ("B:exec", "exec into a new container, phase B, storm"),
    ("B:exec into A", "exec into a phase A container, phase B, storm"),
    ("final:exec", "final exec"),
    ("final:stop", "final stop"),
    ("reload", "reload, phase B"),
)


def _report(settings: Settings, tally: Tally) -> tuple[dict[str, Any], str]:
    """Return the result document and the Markdown text of all runs."""
    summaries = {kind: summary_ms(values) for kind, values in tally.latencies.items()}
    start_ratio = _ratio(
        summaries.get("B:start", {}).get("p99"), summaries.get("A:start", {}).get("p99")
    )
    lines = _verdict_lines(settings, tally, start_ratio)
    text = _latency_table(summaries) + "\n" + "".join(f"- {line}\n" for line in lines)
    return _document(settings, tally, summaries, start_ratio), text


def _latency_table(summaries: dict[str, dict[str, float | int]]) -> str:
    rows = []
    for kind, label in TABLE_KINDS:
        found = summaries.get(kind)
        if not found or not found["count"]:
            continue
        rows.append(
            (
                label,
                found["count"],
                f"{found['p50']:.1f}",
                f"{found['p95']:.1f}",
                f"{found['p99']:.1f}",
                f"{found['max']:.1f}",
            )
        )
    return markdown_table(
        ("operation", "count", "p50 (ms)", "p95 (ms)", "p99 (ms)", "max (ms)"), rows
    )


def _verdict_lines(settings: Settings, tally: Tally, start_ratio: float) -> list[str]:
    """Return one line per target, and the reload and CPU figures."""
    # Each later run starts with the memory that the runs before it left
    # resident, so the first run's values are those of a fresh process.
    peak = max(tally.rss_mib.get("peak (VmHWM)", [math.nan]))
    with_phase_a = tally.rss_mib.get("with phase A running", [math.nan])[0]
    with_both = tally.rss_mib.get("with both phases running", [math.nan])[0]
    rss_met = peak * MIB_IN_MB < RSS_TARGET_MB

    starts_b = len(tally.latencies.get("B:start", []))
    interval_ms = statistics.mean(tally.reload_intervals or [math.nan]) * 1000
    cpu = ", ".join(
        f"phase {phase}: daemon {tally.daemon_cpu_seconds[phase]:.1f} s, "
        f"runc and wrappers {tally.children_cpu_seconds[phase]:.1f} s, "
        f"wall {tally.wall_seconds[phase]:.1f} s"
        for phase in tally.wall_seconds
    )
    return [
        f"failures: {len(tally.failures)} (must be 0)",
        f"unmanageable containers: {len(tally.unmanageable)} (must be 0)",
        f"start p99 with storm / without: {start_ratio:.3f} (target <= "
        f"{START_P99_RATIO_TARGET}: {_verdict(start_ratio <= START_P99_RATIO_TARGET)})",
        f"RSS of the daemon's process in the first run with {settings.containers} "
        f"containers running: {with_phase_a:.1f} MiB, with "
        f"{2 * settings.containers}: {with_both:.1f} MiB. Peak (VmHWM) over all "
        f"runs: {peak:.1f} MiB (target < {RSS_TARGET_MB:.0f} MB: {_verdict(rss_met)})",
        _children_line(settings, tally),
        f"reloads committed: {len(tally.reload_changes)} of "
        f"{settings.reloads * settings.runs}, one every {interval_ms:.0f} ms. "
        f"Phase B starts during which a reload committed: "
        f"{tally.overlapping_starts} of {starts_b}",
        f"CPU time, summed over {settings.runs} run(s): {cpu}",
    ]


def _children_line(settings: Settings, tally: Tally) -> str:
    if not tally.children_memory:
        return "child processes: not measured"
    first = tally.children_memory[0]
    return (
        f"child processes of the daemon with {settings.containers} containers "
        f"running, first run: {first['processes']:.0f} (one foreground runc "
        f"each), {first['rss_anon_mib']:.1f} MiB anonymous memory in all, "
        f"{first['vm_rss_mib']:.1f} MiB resident counting runc's shared file "
        "pages once per process"
    )


def _document(
    settings: Settings,
    tally: Tally,
    summaries: dict[str, dict[str, float | int]],
    start_ratio: float,
) -> dict[str, Any]:
    return {
        "settings": attrs.asdict(settings),
        "stop_slack_seconds": STOP_SLACK_SECONDS,
        "final_concurrency": FINAL_CONCURRENCY,
        "runc": _runc_version(),
        "summaries_ms": summaries,
        "start_p99_ratio": start_ratio,
        "start_p99_ratio_target": START_P99_RATIO_TARGET,
        "rss_mib": {
            key: [round(value, 1) for value in values]
            for key, values in tally.rss_mib.items()
        },
        "rss_target_mb": RSS_TARGET_MB,
        "children_memory": [
            {key: round(value, 1) for key, value in entry.items()}
            for entry in tally.children_memory
        ],
        "failures": tally.failures,
        "unmanageable": tally.unmanageable,
        "reload_changes": tally.reload_changes,
        "reload_intervals_seconds": [
            round(value, 4) for value in tally.reload_intervals
        ],
        "phase_b_starts_overlapping_a_reload": tally.overlapping_starts,
        "wall_seconds": _rounded(tally.wall_seconds),
        "daemon_cpu_seconds": _rounded(tally.daemon_cpu_seconds),
        "children_cpu_seconds": _rounded(tally.children_cpu_seconds),
        "latencies_seconds": {
            kind: [round(value, 5) for value in values]
            for kind, values in tally.latencies.items()
        },
    }


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 3) for key, value in values.items()}


def _runc_version() -> str:
    completed = subprocess.run(
        ["runc", "--version"], capture_output=True, text=True, check=False, timeout=10
    )
    return completed.stdout.splitlines()[0] if completed.stdout else "unknown"


def _parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stress",
        description="Start, exec into, stop and remove real runc containers "
        "through the embedding API, without and with a reload storm.",
    )
    parser.add_argument(
        "--containers", type=int, default=100, help="containers per phase; default 100"
    )
    parser.add_argument(
        "--reloads", type=int, default=50, help="reloads in the storm; default 50"
    )
    parser.add_argument(
        "--execs",
        type=int,
        default=None,
        help="execs into phase A containers during the storm; default: --containers",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=12,
        help="start and exec operations at once; default 12",
    )
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=2.0,
        help="seconds between SIGTERM and SIGKILL in the final stops; default 2",
    )
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=None,
        help="seconds between storm reloads; default: phase A's duration "
        "divided by --reloads",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="whole runs, each on a new daemon; the latencies of all runs are "
        "pooled; default 1",
    )
    parser.add_argument(
        "--tmp-dir",
        default=None,
        help="parent of the daemon's temporary directory; default: the system's",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        help="level of the daemon's log lines on stderr; default WARNING",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the results only"
    )
    arguments = parser.parse_args(argv)
    if min(arguments.containers, arguments.concurrency, arguments.runs) < 1:
        parser.error("--containers, --concurrency and --runs must be at least 1")
    if arguments.reloads < 0:
        parser.error("--reloads must be 0 or more")
    if arguments.execs is None:
        arguments.execs = arguments.containers
    return arguments


def run_once(settings: Settings, tally: Tally, parent: str | None) -> None:
    """Run `stress` on a new temporary directory, and remove it afterwards."""
    root = Path(tempfile.mkdtemp(prefix="dystress-", dir=parent))
    try:
        trio.run(stress, settings, root, tally)
    finally:
        try:
            clean_up(root)
        except (OSError, subprocess.SubprocessError) as error:
            print(f"cleanup of {root} failed: {error}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _parse_arguments(argv)
    logging.basicConfig(level=arguments.log_level.upper())
    settings = Settings(
        containers=arguments.containers,
        reloads=arguments.reloads,
        execs=arguments.execs,
        concurrency=arguments.concurrency,
        stop_grace=arguments.stop_grace,
        reload_interval=arguments.reload_interval,
        runs=arguments.runs,
    )
    tally = Tally()
    interrupted = False
    try:
        for number in range(settings.runs):
            print(f"run {number + 1} of {settings.runs}", flush=True)
            run_once(settings, tally, arguments.tmp_dir)
    except* KeyboardInterrupt:
        interrupted = True
    if interrupted:
        print("interrupted; the containers and files of the run are removed")
        return INTERRUPTED_STATUS
    document, text = _report(settings, tally)
    print(text)
    if not arguments.no_write:
        plot(tally, RESULTS_DIRECTORY / PLOT_NAME)
        print(f"wrote {RESULTS_DIRECTORY / PLOT_NAME}")
        for path in write_results("stress", document, text):
            print(f"wrote {path}")
    if tally.failures or tally.unmanageable:
        print("FAILED: some operations failed; see the failures above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
