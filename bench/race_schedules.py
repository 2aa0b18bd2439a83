"""Random schedules of container operations and reloads, for the race explorer.

A schedule is pure data drawn from a seeded random generator. It holds
the configuration the daemon starts with and the containers with the
runtime each requests. It holds the container operations and the reloads,
each with the virtual time at which it begins, and each reload is one
change to daemon.json. The same seed and index always give the same
schedule, so the explorer runs one schedule against both wrapper stores,
and a violating schedule can be rerun by its index.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import attrs

from messages.config import BUILTIN_RUNTIME

RUNTIME_NAMES = ("alpha", "beta", "gamma")
# "" requests the default runtime, so switching default-runtime matters.
CONTAINER_RUNTIMES = (*RUNTIME_NAMES, "")
# runtimeArgs values; one has a space, which the wrapper must quote.
ARGUMENT_SETS = (
    ("--debug",),
    ("--log-format", "json"),
    ("--root", "/run/runtime root"),
    ("--systemd-cgroup", "--debug"),
)
# The two fake runtime executables a runtime's path can name. The explorer
# writes them once; their content never changes.
EXECUTABLES = ("runtime-a", "runtime b with space")

START, EXEC, STOP = "start", "exec", "stop"
OPERATION_WEIGHTS = {START: 4, EXEC: 4, STOP: 2}

# The reload changes, applied in this order from a random starting point.
ARGS_CHANGED = "args-changed"
ARGS_DROPPED = "args-dropped"
RUNTIME_REMOVED = "runtime-removed"
RUNTIME_READDED = "runtime-re-added"
PATH_CHANGED = "path-changed"
DEFAULT_SWITCHED = "default-switched"
CHANGES = (
    ARGS_CHANGED,
    ARGS_DROPPED,
    RUNTIME_REMOVED,
    RUNTIME_READDED,
    PATH_CHANGED,
    DEFAULT_SWITCHED,
)

# Virtual seconds within which operations and reloads begin; runtime calls
# are delayed by up to MAX_CALL_DELAY, so an operation often spans reloads.
HORIZON = 5.0
MAX_CALL_DELAY = 2.0
# Share of runtime calls that get no delay at all.
UNDELAYED_SHARE = 0.4
CONTAINERS = (2, 3)
OPERATIONS = (4, 9)
RELOADS = (2, 4)


@attrs.frozen
class RuntimeEntry:
    """One runtime of daemon.json: which fake executable, and its runtimeArgs."""

    executable: str
    args: tuple[str, ...]


@attrs.frozen
class ConfigState:
    """The runtimes part of daemon.json, plus runtimes removed and not re-added."""

    runtimes: tuple[tuple[str, RuntimeEntry], ...]
    default_runtime: str
    removed: tuple[tuple[str, RuntimeEntry], ...] = ()

    def document(self, executables: Mapping[str, str]) -> dict[str, Any]:
        """Return daemon.json's content, with `executables` mapping names to paths."""
        runtimes: dict[str, Any] = {}
        for name, entry in self.runtimes:
            runtime: dict[str, Any] = {"path": executables[entry.executable]}
            if entry.args:
                runtime["runtimeArgs"] = list(entry.args)
            runtimes[name] = runtime
        return {"runtimes": runtimes, "default-runtime": self.default_runtime}


@attrs.frozen
class Operation:
    """A container operation that begins `at` virtual seconds into the schedule."""

    at: float
    kind: str
    container: int


@attrs.frozen
class Reload:
    """A reload that begins `at` virtual seconds in, after writing `config`."""

    at: float
    change: str
    config: ConfigState


@attrs.frozen
class Schedule:
    index: int
    initial: ConfigState
    container_runtimes: tuple[str, ...]
    operations: tuple[Operation, ...]
    reloads: tuple[Reload, ...]


def make_schedule(seed: int, index: int) -> Schedule:
    """Draw schedule `index` of the run seeded with `seed`."""
    rng = random.Random(f"{seed}/{index}/schedule")
    initial = ConfigState(
        runtimes=tuple(
            (name, RuntimeEntry(rng.choice(EXECUTABLES), rng.choice(ARGUMENT_SETS)))
            for name in RUNTIME_NAMES
        ),
        default_runtime=rng.choice((*RUNTIME_NAMES, BUILTIN_RUNTIME)),
    )

    container_runtimes = tuple(
        rng.choice(CONTAINER_RUNTIMES) for _ in range(rng.randint(*CONTAINERS))
    )
    operations = [
        # Each container starts first, so most later operations find it running.
        Operation(at=rng.uniform(0, HORIZON / 4), kind=START, container=number)
        for number in range(len(container_runtimes))
    ]
    kinds = list(OPERATION_WEIGHTS)
    weights = list(OPERATION_WEIGHTS.values())

    for _ in range(rng.randint(*OPERATIONS)):
        operations.append(
            Operation(
                at=rng.uniform(0, HORIZON),
                kind=rng.choices(kinds, weights)[0],
                container=rng.randrange(len(container_runtimes)),
            )
        )

    reloads = []
    config = initial
    first_change = rng.randrange(len(CHANGES))
    times = sorted(rng.uniform(0, HORIZON) for _ in range(rng.randint(*RELOADS)))
    for number, at in enumerate(times):
        planned = CHANGES[(first_change + number) % len(CHANGES)]
        change, config = apply_change(config, planned, rng)
        reloads.append(Reload(at=at, change=change, config=config))

    return Schedule(
        index=index,
        initial=initial,
        container_runtimes=container_runtimes,
        operations=tuple(sorted(operations, key=lambda operation: operation.at)),
        reloads=tuple(reloads),
    )


def apply_change(
    config: ConfigState, change: str, rng: random.Random
) -> tuple[str, ConfigState]:
    """Apply `change` to `config`; return the change made and the new state.

    A change that cannot apply (no runtime has arguments to drop, none was
    removed to re-add) becomes the nearest one that can, and the returned
    name is the change made.
    """
    runtimes = dict(config.runtimes)
    removed = dict(config.removed)
    if not runtimes:
        # Every runtime is in `removed`, so re-adding one always applies.
        change = RUNTIME_READDED
    if change == RUNTIME_READDED and not removed:
        change = ARGS_CHANGED
    with_args = sorted(name for name, entry in runtimes.items() if entry.args)
    if change == ARGS_DROPPED and not with_args:
        change = ARGS_CHANGED
    default = config.default_runtime

    if change == ARGS_CHANGED:
        name = rng.choice(sorted(runtimes))
        new_args = [args for args in ARGUMENT_SETS if args != runtimes[name].args]
        runtimes[name] = attrs.evolve(runtimes[name], args=rng.choice(new_args))
    elif change == ARGS_DROPPED:
        name = rng.choice(with_args)
        runtimes[name] = attrs.evolve(runtimes[name], args=())
    elif change == RUNTIME_REMOVED:
        name = rng.choice(sorted(runtimes))
        removed[name] = runtimes.pop(name)
        if default == name:
            # A removed runtime cannot stay the default: daemon.json would
            # be invalid, and the reload would keep the old snapshot.
            default = BUILTIN_RUNTIME
    elif change == RUNTIME_READDED:
        name = rng.choice(sorted(removed))
        runtimes[name] = removed.pop(name)
    elif change == PATH_CHANGED:
        name = rng.choice(sorted(runtimes))
        other = [path for path in EXECUTABLES if path != runtimes[name].executable]
        runtimes[name] = attrs.evolve(runtimes[name], executable=other[0])
    elif change == DEFAULT_SWITCHED:
        others = [n for n in (BUILTIN_RUNTIME, *sorted(runtimes)) if n != default]
        default = rng.choice(others)
    else:
        raise ValueError(f"unknown reload change {change!r}; use one of {CHANGES}")

    ordered = tuple(sorted(runtimes.items()))
    return change, ConfigState(ordered, default, tuple(sorted(removed.items())))
