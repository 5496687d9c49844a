"""A graceful stop on SIGTERM/SIGINT: exit 0 within a bound, nothing lost or sent twice.

Inputs check :data:`STOP` before every read. Two ways to end (``CDP_STOP_MODE``):

* **end_input** (the default): the inputs end their partitions (an end of input), Bytewax
  closes the last epoch at once (sinks flushed, state snapshotted) and the run returns.
  The keyed step keeps every pending timer (a stop is not an end of input: nothing is
  fired early). With recovery on, Bytewax calls and snapshots every key it holds at an
  end of input, ~45 µs a customer: 1M customers held add ~45 s.
* **settle** (``install(settle_fallback_s=...)``, recovery on): the Kafka inputs stop
  reading but stay open (nothing more is released, no mark moves a
  timer on), the flow works off what it had read, and Bytewax closes epochs as usual,
  each close flushing the sinks and snapshotting the state. Once every input partition
  of the process has seen ``SETTLE_EPOCHS`` closes since the stop and no sink partition
  holds records since its last snapshot (or the fallback wait has passed), the process
  interrupts its own run, as Ctrl-C does, and
  exits 0. A restart resumes from the last committed epoch: the inputs where they
  stopped, and anything the interrupt cut short is decided again with the same ids (the
  outbox keeps a command from leaving twice). The stop takes two epoch closes (one to
  two ``CDP_EPOCH_SECONDS``) and a flush, whatever the number of customers held: the
  better choice once a process holds more customers than two epochs' worth of ~45 µs.
  Every process of a cluster must use the same mode.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

STOP = threading.Event()
SETTLE_EPOCHS = 2  # closes seen by every watched partition after the stop, then interrupt

_settle: dict[str, Any] = {}  # install(settle=...): {"fallback_s": float}; empty: end input
_closes: dict[int, int] = {}  # watched input → epoch closes it has seen since the stop
_dirty: set[int] = set()  # watched sink partitions written to since their last snapshot
_interrupting = threading.Event()


def request_stop(signum: int = signal.SIGTERM, _frame: Any = None) -> None:
    if _interrupting.is_set():  # our own interrupt, once the run has settled
        raise KeyboardInterrupt
    if not STOP.is_set():
        how = ("working off what was read, then interrupting after the epochs close"
               if _settle else "ending the input, flushing sinks, snapshotting")
        log.warning("%s: stopping: %s", signal.Signals(signum).name, how)
        STOP.set()
        if _settle:
            threading.Thread(target=_interrupt_when_settled, name="cdp-stop",
                             daemon=True).start()


def install(settle_fallback_s: float | None = None) -> bool:
    """SIGTERM and SIGINT request a graceful stop (main thread only; False elsewhere).
    ``settle_fallback_s`` (recovery on): stop by interrupting the run once it has settled,
    at the latest this long after the stop (see the module doc); None: end the input."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if settle_fallback_s is not None:
        _settle["fallback_s"] = settle_fallback_s
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    return True


def fallback_s(epoch_seconds: float) -> float:
    """How long a settling stop waits at most for its epochs to close (then interrupts)."""
    return max(30.0, (SETTLE_EPOCHS + 2) * epoch_seconds)


def settling() -> bool:
    """A stop was requested and the run stops by settling and interrupting: inputs stay
    open but read nothing more."""
    return bool(_settle) and STOP.is_set()


def watch(part: object) -> None:
    """An input partition whose epoch closes a settling stop waits for."""
    if _settle:
        _closes.setdefault(id(part), 0)


def epoch_closed(part: object) -> None:
    """A watched input's snapshot: an epoch closed (counted after the stop only)."""
    if _settle and STOP.is_set() and id(part) in _closes:
        _closes[id(part)] += 1


def written(part: object) -> None:
    """A sink partition took records: it holds some until its next snapshot (a flush)."""
    if _settle:
        _dirty.add(id(part))


def flushed(part: object) -> None:
    """A sink partition's snapshot: what it took is written (or in the snapshot)."""
    if _settle:
        _dirty.discard(id(part))


def settled() -> bool:
    """Every input has seen SETTLE_EPOCHS closes since the stop (the epoch of its last
    read is closed, and one more), and no sink partition holds records since its last
    snapshot. (Records still on their way then are decided again after a restart.)"""
    return (all(n >= SETTLE_EPOCHS for n in list(_closes.values()))
            and not _dirty)


def interrupted() -> bool:
    """The run ended by the stop's own interrupt (the caller exits 0)."""
    return _interrupting.is_set()


def _interrupt_when_settled() -> None:
    deadline = time.monotonic() + _settle["fallback_s"]
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not settled():
        log.warning("stop: the epochs did not close within %.0f s; interrupting anyway (a "
                    "restart decides again what was not committed)", _settle["fallback_s"])
    _interrupting.set()
    os.kill(os.getpid(), signal.SIGINT)  # handled in the main thread: KeyboardInterrupt
