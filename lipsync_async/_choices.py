"""The service's closed vocabularies: resolutions and speaker orders.

Their own module, importing nothing: ``_cost`` and the command line's ``cost`` and ``--help``
need the values without the request models (attrs, yarl) behind them (issue 18: a start under
150 ms). ``_models`` re-exports them beside the ``Resolution`` and ``Order`` types.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ORDERS", "RESOLUTIONS"]

RESOLUTIONS: Final = ("480p", "720p")
ORDERS: Final = ("meanwhile", "left_right", "right_left")
