"""Progress bars: every tqdm bar of robustpath is made by :func:`bar`.

A bar is shown when the caller asks for it (``progress=True``) and the runtime allows it
(:attr:`robustpath.runtime.Runtime.progress`, off with ``--no-progress``). How it is
drawn depends on where standard error goes:

* a terminal (or a Jupyter kernel): tqdm's redrawn bar (``tqdm.auto``), redrawn at most
  every :data:`TERMINAL_INTERVAL` seconds;
* anything else (a redirected log, a pipe, a CI console): **line mode**, no carriage
  returns and no bar graphics: one whole line ``desc: n/total [elapsed<left, rate]`` at
  most every :data:`LINE_INTERVAL` seconds, the first only after a bar has run that
  long, so short bars print nothing and a long epoch is still followable in a log.

Bars name what they count (``train cnn-small seed 0 epoch 2/4``, ``curve none/bezier
s0-1 epoch 2/4``, ``AA apgd-ce batch 1/1``). :func:`write` prints a line without
breaking a bar on a terminal.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm as _plain_tqdm
from tqdm.auto import tqdm as _auto_tqdm

from robustpath import runtime

#: seconds between two lines of a bar in line mode (not a terminal)
LINE_INTERVAL = 30.0
#: seconds between two redraws of a bar on a terminal
TERMINAL_INTERVAL = 0.5
_LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_LINE_FORMAT_OPEN = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"


def interactive(stream=None) -> bool:
    """True when ``stream`` (default standard error) is a terminal or a Jupyter kernel
    shows the output: where a redrawn bar belongs."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
    shell = sys.modules.get("IPython")
    ip = getattr(shell, "get_ipython", lambda: None)() if shell is not None else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def enabled(progress: bool = True) -> bool:
    """Whether a bar asked for with ``progress`` is shown under the current runtime."""
    return bool(progress) and runtime.current().progress


class _LineBar(_plain_tqdm):
    """tqdm that prints whole lines (throttled) instead of redrawing one line."""

    def __init__(self, *args, **kwargs):
        self._printed = False
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if msg == "":  # tqdm clearing a bar: nothing was drawn, nothing to clear
            return False
        self.fp.write((msg if msg is not None else self.__str__()) + "\n")
        self.fp.flush()
        self._printed = True
        return True

    def refresh(self, nolock=False, lock_args=None):
        # tqdm.write refreshes every bar: not before the bar's first line is due
        start = getattr(self, "start_t", None)  # None while tqdm's __init__ runs
        if not self._printed and start is not None and self._time() - start < self.delay:
            return False
        return super().refresh(nolock=nolock, lock_args=lock_args)

    def clear(self, nolock=False):  # tqdm.write and nested bars clear with "\r"
        pass

    def moveto(self, n):  # cursor movements of nested bars
        pass

    def close(self):
        if self.disable:
            return
        if self._printed:  # a long bar: its last state; short bars stay out of the log
            self._ema_dt = lambda: None
            self.display()
        self.leave = False
        super().close()


def bar(iterable=None, *, desc: str, total: int | None = None, unit: str = "it",
        progress: bool = True, leave: bool = False, **kwargs):
    """A tqdm bar over ``iterable`` (or with ``total`` for manual :meth:`update`) that
    follows the module's rules; disabled (a no-op with the same interface) when not
    :func:`enabled`."""
    if not enabled(progress):
        return _plain_tqdm(iterable, total=total, disable=True)
    if interactive():
        opts = {"mininterval": TERMINAL_INTERVAL, "dynamic_ncols": True, **kwargs}
        return _auto_tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, **opts)
    sized = total is not None or hasattr(iterable, "__len__")
    opts = {"bar_format": _LINE_FORMAT if sized else _LINE_FORMAT_OPEN, **kwargs,
            "mininterval": LINE_INTERVAL, "delay": LINE_INTERVAL, "ascii": True}
    return _LineBar(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr,
                    **opts)


def write(msg: str) -> None:
    """Print ``msg`` on standard error without breaking a bar drawn on a terminal."""
    if interactive():
        _auto_tqdm.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr, flush=True)


def throttle(seconds: float = TERMINAL_INTERVAL):
    """A callable that is True at most every ``seconds`` (for postfix updates that cost
    a host-device sync: ask it before reading a device value)."""
    last = [-float("inf")]

    def due() -> bool:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            return True
        return False

    return due
