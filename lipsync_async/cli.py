"""The ``lipsync-async`` command line (needs the ``cli`` extra: click and rich).

The commands live in :mod:`lipsync_async._cli`; this module is the stable entry point
(``lipsync-async = "lipsync_async.cli:main"``), also runnable as ``python -m lipsync_async.cli``.
It imports nothing beyond the standard library until it knows click and rich are there, so the
core wheel's command says what to install instead of crashing on an import.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

__all__ = ["main"]

#: What to install for the command line; the one line a core-only install prints.
MISSING_EXTRA = (
    "lipsync-async: the command line needs the 'cli' extra (click, rich): "
    "pip install 'lipsync-async[cli]'"
)


def _missing_extra(exc: ImportError) -> NoReturn:
    print(f"{MISSING_EXTRA} (missing: {exc.name or exc})", file=sys.stderr)
    sys.exit(2)


def main(*args: Any, **kwargs: Any) -> Any:
    """Run the command line (click's ``main``: ``args`` and ``kwargs`` go to it)."""
    try:
        import click  # noqa: F401
        import rich  # noqa: F401
    except ImportError as exc:
        _missing_extra(exc)
    from ._cli import main as group

    return group(*args, **kwargs)


if __name__ == "__main__":
    main()
