"""A run whose training raised ends `failed`, with the exception's type and message.

Transformers calls no callback when `train()` raises (an OOM, a KeyboardInterrupt), so the
callback cannot hear of it from the Trainer. `FeatureDriftCallback.attach` wraps the trainer's
`train` and fails the run on the way out; for callbacks added without `attach`, and as a last
resort, the process's exception hook and its exit (the route experiment trackers take: chain
`sys.excepthook`, register `atexit`) fail every session still open. A SIGKILL runs neither:
that run stays `running` on record and shows as stale once its heartbeats stop.
"""

from __future__ import annotations

import atexit
import re
import sys
import threading
import weakref
from typing import Any

from featuredrift.monitor.config import mask_url

MESSAGE_KEPT = 1000  # characters of an exception message kept with the run
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")

_open: weakref.WeakSet = weakref.WeakSet()
_lock = threading.Lock()
_installed = False
_previous_hook = None


def error_info(error: BaseException | None, default: str = "") -> dict[str, str]:
    """The exception's type and message as stored with the run, URLs (where tokens and passwords
    live) masked."""
    if error is None:
        return {"type": "exit", "message": default}
    message = _URL.sub(lambda m: mask_url(m.group(0)), str(error))[:MESSAGE_KEPT]
    return {"type": type(error).__name__, "message": message or default}


def watch(session: Any) -> None:
    """Fail `session` (anything with `fail(error_info)`) if the process raises or exits before it closes."""
    global _installed, _previous_hook
    with _lock:
        _open.add(session)
        if not _installed:
            _previous_hook = sys.excepthook
            sys.excepthook = _excepthook
            atexit.register(_at_exit)
            _installed = True


def forget(session: Any) -> None:
    with _lock:
        _open.discard(session)


def _open_sessions() -> list:
    with _lock:
        return list(_open)


def _excepthook(kind, value, traceback) -> None:
    for session in _open_sessions():
        session.fail(error_info(value))
    (_previous_hook or sys.__excepthook__)(kind, value, traceback)


def _at_exit() -> None:
    for session in _open_sessions():
        session.fail(error_info(None, "the process exited before training ended"))
