"""Command-line numbers checked where they are parsed: ``type=`` functions for argparse.

A bad value stops the command at once with argparse's usage line and exit status 2, e.g.
``hf-model predict: error: argument --top_k: must be a whole number of at least 1, got '0'``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(minimum: int = 1) -> Callable[[str], int]:
    """An argparse ``type=`` that accepts integers ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {minimum}, got {text!r}")
        return value

    return parse


def number_in(low: float, high: float, *, high_included: bool = True) -> Callable[[str], float]:
    """An argparse ``type=`` that accepts finite numbers from ``low`` to ``high`` (``high`` itself unless excluded)."""
    span = f"from {low:g} to {high:g}" if high_included else f"at least {low:g} and less than {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {text!r}") from None
        if not (math.isfinite(value) and low <= value and (value <= high if high_included else value < high)):
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {text!r}")
        return value

    return parse
