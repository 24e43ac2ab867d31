"""The ``lipsync-async`` command line (needs the ``cli`` extra: click and rich).

The commands live in :mod:`lipsync_async._cli`; this module is the stable entry point
(``lipsync-async = "lipsync_async.cli:main"``), also runnable as ``python -m lipsync_async.cli``.
"""

from __future__ import annotations

from ._cli import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
