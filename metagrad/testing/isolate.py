"""Running someone else's code without letting it end the audit.

:func:`call` runs ``fn()`` and returns ``(value, None)`` or ``(None, why)``, ``why`` one
line saying what went wrong: an exception (its type and first line; a
``NotImplementedError`` reads "does not support", see :data:`UNSUPPORTED`), ``sys.exit(...)`` /
``exit()`` (``SystemExit``), a call of ``os._exit`` (refused while the target runs: it would
end the process with the target's status, an exit 0 reading as a pass), or, with a
``timeout`` in seconds, a run that did not finish (interrupted by ``SIGALRM``; only on
POSIX, in the main thread, and only between Python bytecodes, so a long C call finishes
first). ``KeyboardInterrupt`` is not caught: the user's Ctrl-C still stops the audit.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

UNSUPPORTED = "the target does not support this case"
"""How a ``NotImplementedError`` from the target begins: code that cannot express a problem
(an architecture it has no layer for, a step count it refuses) says so by raising it, and
the case is reported "not run" rather than failed."""


class TargetExit(BaseException):
    """Raised in place of ``os._exit`` while a target runs."""

    def __init__(self, status: Any):
        super().__init__(status)
        self.status = status


class TargetTimeout(BaseException):
    """Raised by the alarm when a target runs past its time."""


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else ""


def _can_alarm() -> bool:
    return hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()


def call(fn: Callable[[], Any], timeout: float | None = None) -> tuple[Any, str | None]:
    """``(fn(), None)``, or ``(None, what went wrong)`` (module docstring)."""
    real_exit = os._exit

    def refuse(status: Any = 0) -> None:
        raise TargetExit(status)

    alarm = timeout is not None and timeout > 0 and _can_alarm()
    previous: Any = None
    if alarm:
        def on_alarm(signum: int, frame: Any) -> None:
            raise TargetTimeout()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, float(timeout or 0.0))
    os._exit = refuse  # type: ignore[assignment]
    try:
        return fn(), None
    except SystemExit as err:
        return None, (f"the target called sys.exit({err.code!r}) (SystemExit); a target must "
                      "return its result, not end the process")
    except TargetExit as err:
        return None, (f"the target called os._exit({err.status!r}); a target must return its "
                      "result, not end the process")
    except TargetTimeout:
        return None, (f"the target did not finish within {timeout:g} s (stopped; raise the "
                      "limit with timeout=... / --timeout if it is merely slow)")
    except NotImplementedError as err:
        return None, f"{UNSUPPORTED} (NotImplementedError: {first_line(err)})"
    except Exception as err:  # noqa: BLE001 - any failure of the target is a failed case
        return None, f"the target raised {type(err).__name__}: {first_line(err)}"
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0.0)
            signal.signal(signal.SIGALRM, previous)
        os._exit = real_exit
