"""One background thread that draws the items of an iterator ahead of their consumer.

Used for the tiles of inference (:class:`unet_pipeline.model.tile_feed.TileFeed`) and the
batches of training (:class:`unet_pipeline.train.sampler.BatchStream`): no worker processes,
items in order, an error in the thread raised in the consumer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["ReadAhead"]

T = TypeVar("T")


class ReadAhead(Generic[T]):
    """The items of ``items``, drawn up to ``depth`` ahead by one daemon thread, in order.

    An exception raised while drawing an item is raised by ``next()`` in the consumer, after
    the items before it, and ends the thread. :meth:`close` stops the thread (queued items are
    dropped); use it, or the context manager, when the consumer stops early.

    Parameters
    ----------
    items
        The iterator to draw from; only the thread touches it.
    depth
        Items kept ready (>= 1).
    name
        The thread's name.
    """

    _END = object()

    def __init__(self, items: Iterator[T], *, depth: int = 2, name: str = "read-ahead") -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self.thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self.thread.start()

    def _produce(self) -> None:
        while not self._stop.is_set():
            try:
                item: object = next(self._items)
            except StopIteration:
                item = self._END
            except BaseException as exc:  # handed to the consumer, raised there
                item = exc
            if not self._put(item) or item is self._END or isinstance(item, BaseException):
                return

    def _put(self, item: object) -> bool:
        """Queue ``item`` unless closed meanwhile; returns False when closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> ReadAhead[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is self._END or isinstance(item, BaseException):
            self._done = True
            if isinstance(item, BaseException):
                raise item
            raise StopIteration
        return item  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the thread; items still queued are dropped."""
        self._stop.set()
        self._done = True
        while self.thread.is_alive():
            try:
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self.thread.join(timeout=0.05)

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
