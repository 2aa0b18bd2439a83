"""The README's embedding example, run as written (with its paths moved to tmp)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_real

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = pytest.mark.real


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_embedding_example_runs(tmp_path: Path) -> None:
    require_real()
    blocks = _python_blocks(README.read_text())
    assert len(blocks) == 1
    program = blocks[0].replace("/tmp/dy", str(tmp_path / "dy"))
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        cwd=README.parent,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "0 b'hi\\n'"
    assert lines[1].startswith("RuntimeLockIn(name='runc'")
