"""Non-blocking keyboard input with a tiny line editor, so typing works while the mic listens.

In cbreak mode the terminal hands us keys one by one (Ctrl-C still raises KeyboardInterrupt);
the typed line is shown by the caller's live display instead of the terminal's echo.
"""

from __future__ import annotations

import codecs
import os
import select
import sys

BACKSPACE = ("\x7f", "\b")
ENTER = ("\r", "\n")
CTRL_D = "\x04"
# A Ctrl-D typed while the terminal edited lines (a command running between two listens) is its end of input;
# read once keys are read one by one, it arrives as a NUL (Linux's n_tty): the first byte read then is taken as it.
PENDING_EOF = "\x00"
CTRL_U = "\x15"


class KeyReader:
    """Polls stdin; ``poll`` returns a finished line, ``EOF`` on Ctrl-D, or None."""

    EOF = object()

    def __init__(self) -> None:
        self.buffer = ""
        self.lines: list[object] = []  # completed lines (or EOF) not yet returned
        self.fd = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else None
        self._saved = None
        # bytes that are not UTF-8 become U+FFFD, and a character split across two reads stays whole
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = False  # nothing read yet since the terminal went key by key

    def __enter__(self) -> KeyReader:
        if self.fd is not None:
            import termios
            import tty

            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd, termios.TCSANOW)  # TCSAFLUSH (the default) would drop keys typed a moment ago
            self._first = True
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def poll(self, timeout: float = 0.0):
        """Consume available keys; a completed line (Enter) is returned, else None."""
        if self.lines:
            return self.lines.pop(0)
        fd = self.fd if self.fd is not None else (sys.stdin.fileno() if sys.stdin else None)
        if fd is None:
            return None
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        raw = os.read(fd, 1024)
        data = self._decoder.decode(raw, final=not raw)
        if not raw or (self._first and data.startswith(PENDING_EOF) and not self.buffer):
            self.lines.append(self.EOF)
        self._first = False
        for ch in data:
            if ch in ENTER:
                self.lines.append(self.buffer)
                self.buffer = ""
            elif ch == CTRL_D and not self.buffer:
                self.lines.append(self.EOF)
            elif ch in BACKSPACE:
                self.buffer = self.buffer[:-1]
            elif ch == CTRL_U:
                self.buffer = ""
            elif ch.isprintable():
                self.buffer += ch
        return self.lines.pop(0) if self.lines else None
