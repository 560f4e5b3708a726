"""Progress bars (tqdm) that stay silent when not on a terminal or when ``quiet``."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], *, desc: str = "", total: int | None = None,
             quiet: bool = False, unit: str = "it") -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr unless quiet or stderr is not a TTY."""
    disable = quiet or not sys.stderr.isatty()
    if disable:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr)
