"""Every example in ``examples/`` runs as-is against the emulator (no ``LIPSYNC_API_KEY``).

Each runs in its own process, as a reader would run it, with ``LIPSYNC_EXAMPLE_FAST=1`` so the
emulator's jobs take 0.05 s; the test checks the exit code and the line that shows it worked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: The span names README's Observability table documents, as the demo's timeline column shows
#: them (``{name:<26}`` after the start): one timeline of ``--otel`` holds each kind.
SPANS = (
    "POST /lipsync-video",
    "POST /lipsync-image",
    "POST /lipsync-image-multi",
    "GET /jobs/{id}",
    "process /webhooks/lipsync",
    "lipsync.job",
    "GET",  # a download
)

#: example file (then, for a second run of it, a space and a label) -> (extra arguments, the
#: lines its output must contain)
CASES: dict[str, tuple[tuple[str, ...], str | tuple[str, ...]]] = {
    "quickstart.py": ((), "bytes downloaded"),
    "fan_out.py": ((), "300 jobs: "),
    "webhook_receiver.py": ((), "status reads: 0"),
    "aiohttp_app.py": ((), "resolved by the mounted receiver"),
    "asgi_app.py": ((), "resolved by the ASGI-mounted receiver"),
    "resume_by_id.py": ((), "resumed 3 jobs by id: 3 completed"),
    "uncertain_submit.py": ((), "the service created 20 jobs"),
    "demo.py": (("--jobs", "30", "--duration", "0.2"), "none twice"),
    "demo.py --otel": (
        ("--jobs", "30", "--duration", "0.2", "--otel"),
        ("per-job timelines", *(f" ms  {name:<26} " for name in SPANS), "lipsync.jobs.pending"),
    ),
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
    env.update(LIPSYNC_EXAMPLE_FAST="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, *args],
        cwd=EXAMPLES.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs_against_the_emulator(name: str) -> None:
    """The example exits 0 against the embedded emulator and prints its key lines (for
    ``demo.py --otel``: a timeline with each documented span name, then the metrics)."""
    args, expected = CASES[name]
    result = run(str(EXAMPLES / name.split()[0]), *args)
    assert result.returncode == 0, result.stderr
    for line in (expected,) if isinstance(expected, str) else expected:
        assert line in result.stdout, result.stdout
    assert "Traceback" not in result.stderr


def test_pytest_fixture_example_passes() -> None:
    """examples/test_with_fixture.py passes under pytest, run explicitly: the default
    `testpaths = ["tests"]` does not collect examples/."""
    result = run(
        "-m", "pytest", str(EXAMPLES / "test_with_fixture.py"), "-q", "-p", "no:cacheprovider"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_every_example_is_smoke_tested() -> None:
    """A new example gets a case here: each runnable file in examples/ is listed."""
    runnable = {
        p.name
        for p in EXAMPLES.glob("*.py")
        if not p.name.startswith("_") and not p.name.startswith("test_")
    }
    assert runnable == {name.split()[0] for name in CASES}
