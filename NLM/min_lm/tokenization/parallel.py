"""A process pool fed from a stream, reading no further ahead than the workers can use.

`Pool.imap` would pull the whole input into its task queue at once: for a 10 GB corpus, 10 GB of memory.
`imap_bounded` submits a task only when fewer than `max_in_flight` are pending, so memory holds a few
tasks whatever the input's size, and the results come back in input order.
"""

from __future__ import annotations

import multiprocessing.pool
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def imap_bounded(pool: multiprocessing.pool.Pool | None, fn: Callable[[T], R], items: Iterable[T],
                 max_in_flight: int) -> Iterator[R]:
    """`fn(item)` for each item, in order: in the pool's processes, or in this one when `pool` is None."""
    if pool is None:
        yield from map(fn, items)
        return
    in_flight: deque = deque()
    for item in items:
        in_flight.append(pool.apply_async(fn, (item,)))
        if len(in_flight) >= max_in_flight:
            yield in_flight.popleft().get()
    while in_flight:
        yield in_flight.popleft().get()
