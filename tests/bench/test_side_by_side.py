"""The side-by-side bench: its schedule in virtual time, its options, its ratios."""

from __future__ import annotations

import itertools
from pathlib import Path

import attrs
import pytest
import trio

from bench.side_by_side import (
    CONTENDERS,
    DEFAULT_CONTENDERS,
    Samples,
    _order,
    _parse_arguments,
    _ratios,
    _run_rounds,
    _stats,
)

# Virtual seconds that each fake workload takes.
WORKLOAD_SECONDS = 1.0


@attrs.define
class Recorder:
    """A contender that records when each of its workloads starts."""

    name: str
    starts: list[float]
    version: str = ""

    async def run_to_completion(self) -> None:
        self.starts.append(trio.current_time())
        await trio.sleep(WORKLOAD_SECONDS)

    async def exec_into(self) -> None:
        self.starts.append(trio.current_time())
        await trio.sleep(WORKLOAD_SECONDS)


async def sample_starts(pause: float) -> list[float]:
    starts: list[float] = []
    contenders = [Recorder("a", starts), Recorder("b", starts)]
    await _run_rounds(contenders, Samples(), rounds=2, warmup=1, seed=1, pause=pause)
    return starts


@pytest.mark.parametrize("pause", [0.05, 0.0])
async def test_rounds_pause_before_samples(
    autojump_clock: trio.abc.Clock, pause: float
) -> None:
    began = trio.current_time()

    starts = await sample_starts(pause)

    # 3 rounds (one of them warm-up) of 2 contenders with 2 workloads.
    assert len(starts) == 12
    assert starts[0] - began == pytest.approx(pause)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps == pytest.approx([WORKLOAD_SECONDS + pause] * 11)


async def test_rounds_count_only_after_warmup(autojump_clock: trio.abc.Clock) -> None:
    samples = Samples()
    contenders = [Recorder("a", []), Recorder("b", [])]

    await _run_rounds(contenders, samples, rounds=2, warmup=1, seed=1, pause=0.05)

    assert samples.rounds[("a", "run")] == [0, 1]
    assert samples.rounds[("b", "exec")] == [0, 1]
    # Samples are timed by the wall clock, so only their count is known here.
    assert len(samples.seconds[("b", "exec")]) == 2


def test_pause_option_default_and_negative() -> None:
    assert _parse_arguments([]).pause_ms == 50
    assert _parse_arguments(["--pause-ms", "0"]).pause_ms == 0
    with pytest.raises(SystemExit):
        _parse_arguments(["--pause-ms", "-1"])
    with pytest.raises(SystemExit):
        _parse_arguments(["--pause-ms", "60001"])


def test_missing_workspace_parent_rejected(tmp_path: Path) -> None:
    assert _parse_arguments(["--tmp-dir", str(tmp_path)]).tmp_dir == str(tmp_path)
    with pytest.raises(SystemExit):
        _parse_arguments(["--tmp-dir", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        _parse_arguments(["--state-dir", str(tmp_path / "missing")])


def test_tmpfs_contender_is_opt_in() -> None:
    assert "dockyard-api-tmpfs" in CONTENDERS
    assert "dockyard-api-tmpfs" not in DEFAULT_CONTENDERS
    assert _parse_arguments(["--contender", "dockyard-api-tmpfs"]).contender == [
        "dockyard-api-tmpfs"
    ]


def test_order_puts_daemons_first() -> None:
    ordered = _order(["runc", "dockerd", "dockyard-api-tmpfs", "dockyard-api"])

    assert set(ordered[:2]) == {"dockyard-api", "dockyard-api-tmpfs"}
    assert ordered[2:] == ["runc", "dockerd"]


def test_paired_ratios_match_rounds() -> None:
    samples = Samples()
    samples.add("runc", "run", 2.0, 0)
    samples.add("runc", "run", 4.0, 2)
    samples.add("dockyard-api", "run", 3.0, 0)
    samples.add("dockyard-api", "run", 9.0, 1)
    samples.add("dockyard-api", "run", 6.0, 2)

    # Round 1 has no runc sample, so it is left out.
    assert samples.paired_ratios("run", "dockyard-api", "runc") == [1.5, 1.5]


def test_ratios_skip_pairs_without_common_rounds() -> None:
    samples = Samples()
    samples.add("runc", "run", 2.0, 0)
    samples.add("dockyard-api", "run", 3.0, 1)
    stats = {
        "run": {
            name: _stats(samples.seconds[(name, "run")])
            for name in ("runc", "dockyard-api")
        }
    }

    assert _ratios(stats, samples) == {}
