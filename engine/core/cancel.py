"""Stopping a task from another thread: a cancel token that tasks check between batches."""
from __future__ import annotations

import threading


class CancelToken:
    """Set from any thread; checked by tasks between batches."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class Cancelled(Exception):
    """A task stopped because its cancel token was set."""
