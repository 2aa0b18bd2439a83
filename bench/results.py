"""Result files of the bench programs: a JSON document and a Markdown table.

Each program writes `bench/results/<name>.json` with its parameters, the
machine it ran on and its numbers, and `bench/results/<name>.md` with the
same numbers as a table for bench/README.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIRECTORY = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """Describe the machine a measurement ran on: cores, memory, Python."""
    return {
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.release()}",
    }


def describe_machine(description: dict[str, Any]) -> str:
    """Return one line such as "2 cores (CPU model), 23.5 GiB, CPython 3.11.7"."""
    cpu = f" ({description['cpu']})" if description.get("cpu") else ""
    memory = description.get("memory_gib")
    memory_text = f"{memory} GiB" if memory is not None else "unknown memory"
    return (
        f"{description['cores']} cores{cpu}, {memory_text}, "
        f"{description['implementation']} {description['python']}, "
        f"{description['system']}"
    )


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return round(kib / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines) + "\n"


def write_results(
    name: str,
    document: dict[str, Any],
    table: str,
    directory: Path = RESULTS_DIRECTORY,
) -> tuple[Path, Path]:
    """Write `<name>.json` and `<name>.md` under `directory`; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    stamped = {
        "program": f"bench.{name}",
        "command": " ".join(["python -m", f"bench.{name}", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **document,
    }
    json_path = directory / f"{name}.json"
    json_path.write_text(json.dumps(stamped, indent=2) + "\n")
    heading = (
        f"`{stamped['command']}` on {describe_machine(stamped['machine'])}, "
        f"{stamped['date']}.\n\n"
    )
    markdown_path = directory / f"{name}.md"
    markdown_path.write_text(heading + table)
    return json_path, markdown_path
