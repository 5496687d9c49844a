"""A graceful stop on SIGTERM/SIGINT: the input ends where it is, Bytewax closes the
epoch (sinks flushed, state and offsets snapshotted) and the process exits 0.

Inputs check :data:`STOP` before every read and end their partition instead of reading
on; the keyed step keeps every pending timer (a stop is not an end of input: nothing is
fired early). A restart with the same recovery directory continues from the snapshot.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)

STOP = threading.Event()


def request_stop(signum: int = signal.SIGTERM, _frame: Any = None) -> None:
    if not STOP.is_set():
        log.warning("%s: stopping: finishing the epoch, flushing sinks, snapshotting",
                    signal.Signals(signum).name)
    STOP.set()


def install() -> bool:
    """SIGTERM and SIGINT request a graceful stop (main thread only; False elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    return True
