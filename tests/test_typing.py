"""A type checker catches a user's mistakes: ``mypy --strict`` over a file of wrong user code.

The package is typed (``py.typed``) and exports every type its public signatures use, so a
misspelled import, a resolution that does not exist or a missing ``None`` check fails in the
user's editor, not at run time. Runs the installed mypy as a subprocess, the way a user would.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

WRONG = Path(__file__).parent / "typing" / "wrong_user_code.py"


def _expected() -> set[tuple[int, str]]:
    out = set()
    for lineno, line in enumerate(WRONG.read_text().splitlines(), start=1):
        match = re.search(r"# E: ([a-z-]+)", line)
        if match:
            out.add((lineno, match.group(1)))
    return out


@pytest.mark.timeout(600)
def test_mypy_strict_reports_exactly_the_user_mistakes(tmp_path: Path) -> None:
    """mypy --strict on user code reports each planted mistake (misspelled import, wrong
    resolution and order literals, unknown keyword, unchecked Optional, wrong callback shape,
    misspelled __version__) at its line and code, and nothing on the correct lines."""
    target = tmp_path / "user_code.py"
    target.write_text(WRONG.read_text())
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--show-error-codes",
            "--no-error-summary", "--hide-error-context", "--cache-dir", str(tmp_path / "cache"),
            str(target),
        ],
        cwd=tmp_path,  # outside the project: its pyproject settings do not apply
        capture_output=True,
        text=True,
        timeout=560,
        check=False,
    )  # fmt: skip
    found = set()
    for line in result.stdout.splitlines():
        match = re.match(r".*user_code\.py:(\d+): error: .*\[([a-z-]+)\]$", line)
        if match:
            found.add((int(match.group(1)), match.group(2)))
    assert result.returncode == 1, result.stdout + result.stderr
    assert found == _expected(), result.stdout
    assert 'maybe "LipsyncClient"' in result.stdout  # mypy's own hint, from the real export list
