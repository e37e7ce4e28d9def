"""GNU grep's line selection as a pure library: patterns (translated by
:mod:`ocifs.posix_regex`) matched over a file fed in pieces, and grep's output.

Semantics are those of GNU grep 3.8 in the C locale (``LC_ALL=C grep``): bytes, ASCII
case folding for ``-i``, ASCII classes; ``-w`` and ``-x`` as GNU defines them.

Binary files (GNU grep's rule): input is read in buffers of :data:`BUFFER_BYTES`; from
the first buffer holding a NUL byte on, NUL ends lines too, no line is printed, and the
file stops at its first selected line (``-c`` counts on); if a line was selected there,
the caller prints ``FILE: binary file matches`` to stderr.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ocifs.posix_regex import PatternError, Syntax, translate

__all__ = [
    "BUFFER_BYTES",
    "FileScan",
    "GrepOptions",
    "Matcher",
    "Mode",
    "PatternError",
    "Syntax",
    "translate",
]

# GNU grep 3.8's INITIAL_BUFSIZE: the unit in which it reads a file and looks for NULs
# (checked on this host: a NUL at offset 98303 makes the first line binary, at 98304 not).
BUFFER_BYTES = 96 * 1024


@dataclass(frozen=True, slots=True)
class GrepOptions:
    """The line-selection flags: ``-i -w -x -v`` and the pattern syntax."""

    syntax: Syntax = Syntax.BASIC
    ignore_case: bool = False
    word: bool = False
    line: bool = False
    invert: bool = False


class Matcher:
    """All patterns (each may hold newlines: one pattern per line, as in grep) as one
    compiled regex that finds, in a buffer of lines, the first line with a match."""

    def __init__(self, patterns: Sequence[bytes], opts: GrepOptions) -> None:
        sources: list[str] = []
        groups = 0
        for text in patterns:
            for one in text.split(b"\n"):
                src, n = translate(one, opts.syntax, groups)
                groups += n
                sources.append(f"(?:{src})")
        body = "|".join(sources) if sources else "(?!)"
        if opts.line:
            body = f"^(?:{body})$"
        elif opts.word:
            body = f"(?<!\\w)(?:{body})(?!\\w)"
        flags = re.MULTILINE | (re.IGNORECASE if opts.ignore_case else 0)
        try:
            self.regex = re.compile(body.encode("latin-1"), flags)
        except re.error as exc:  # a gap in the translation: say so, one line
            raise PatternError(f"cannot translate the pattern: {exc}") from None
        self.invert = opts.invert

    def selected_lines(self, buf: bytes, end: int) -> list[tuple[int, int]]:
        """(start, stop) of each selected line in ``buf[:end]``: lines end at ``\\n``
        and the last one at ``end``; ``buf[end]`` (if any) is a newline or absent."""
        out: list[tuple[int, int]] = []
        pos = 0
        search = self.regex.search
        while pos <= end:
            m = search(buf, pos, end)
            if m is None:
                if self.invert:
                    _all_lines(buf, pos, end, out)
                break
            at = m.start()
            start = buf.rfind(b"\n", pos, at) + 1 or pos
            if start < pos:
                start = pos
            stop = buf.find(b"\n", at, end)
            if stop < 0:
                stop = end
            if self.invert:
                _all_lines(buf, pos, start - 1, out)
            else:
                out.append((start, stop))
            pos = stop + 1
        return out


def _all_lines(buf: bytes, pos: int, end: int, out: list[tuple[int, int]]) -> None:
    """Append every line of ``buf[pos:end]`` (``pos <= end`` means at least one line)."""
    while pos <= end:
        stop = buf.find(b"\n", pos, end)
        if stop < 0:
            stop = end
        out.append((pos, stop))
        pos = stop + 1


class Mode(enum.Enum):
    """What a file's scan prints: lines, a count, its name if selected / not selected,
    or nothing (``-q``)."""

    LINES = "lines"
    COUNT = "count"
    FILES_WITH = "l"
    FILES_WITHOUT = "L"
    QUIET = "q"


class FileScan:
    """The selection of one file's lines, fed in pieces of any size; output in bytes.

    ``name`` is the display name (``None``: no ``NAME:`` prefix). After :meth:`finish`,
    ``selected`` counts selected lines and ``binary_matches`` says whether the caller
    must report ``NAME: binary file matches``. Once ``done`` is set, more input changes
    nothing and the caller may stop reading.
    """

    def __init__(
        self, matcher: Matcher, mode: Mode, name: bytes | None, line_numbers: bool = False
    ) -> None:
        self.matcher = matcher
        self.mode = mode
        self.name = name
        self.prefix = b"" if name is None else name + b":"
        self.line_numbers = line_numbers and mode is Mode.LINES
        self.selected = 0
        self.done = False
        self.binary = False
        self.binary_selected = 0
        self.binary_matches = False
        self._carry = b""
        self._pending = b""  # bytes not yet in a BUFFER_BYTES buffer
        self._lineno = 0

    def feed(self, data: bytes) -> bytes:
        """Scan ``data`` (the next bytes of the file); return what to print."""
        if self.done:
            return b""
        self._pending += data
        out: list[bytes] = []
        while len(self._pending) >= BUFFER_BYTES and not self.done:
            piece = self._pending[:BUFFER_BYTES]
            self._pending = self._pending[BUFFER_BYTES:]
            self._buffer(piece, out)
        return b"".join(out)

    def finish(self) -> bytes:
        """End of file: scan what is left and return the final output."""
        out: list[bytes] = []
        if not self.done:
            if self._pending:
                self._buffer(self._pending, out)
                self._pending = b""
            if self._carry and not self.done:
                buf, self._carry = self._carry, b""
                self._lines(buf, len(buf), out)
        self.done = True
        if self.mode is Mode.COUNT:
            out.append(self.prefix + b"%d\n" % self.selected)
        elif self.mode is Mode.FILES_WITHOUT and self.selected == 0:
            out.append((self.name or b"(standard input)") + b"\n")
        self.binary_matches = self.binary_selected > 0 and self.mode is Mode.LINES
        return b"".join(out)

    def _buffer(self, piece: bytes, out: list[bytes]) -> None:
        if not self.binary and b"\0" in piece:
            self.binary = True
            if self.mode is Mode.LINES:
                self._carry = self._carry.replace(b"\0", b"\n")
        if self.binary:
            piece = piece.replace(b"\0", b"\n")
        buf = self._carry + piece
        end = buf.rfind(b"\n")
        if end < 0:
            self._carry = buf
            return
        self._carry = buf[end + 1 :]
        self._lines(buf, end, out)

    def _lines(self, buf: bytes, end: int, out: list[bytes]) -> None:
        spans = self.matcher.selected_lines(buf, end)
        lines_before = self._lineno
        if self.line_numbers:
            self._lineno += buf.count(b"\n", 0, end) + 1
        if not spans:
            return
        mode = self.mode
        if self.binary and mode is not Mode.COUNT:
            # Binary: quiet, and the file is decided by its first selected line.
            self.selected += 1
            self.binary_selected += 1
            self._selected_file(out)
            self.done = True
            return
        self.selected += len(spans)
        if mode is Mode.LINES:
            counted, lineno = 0, lines_before
            for start, stop in spans:
                if self.line_numbers:
                    lineno += buf.count(b"\n", counted, start)
                    counted = start
                    out.append(b"%s%d:%s\n" % (self.prefix, lineno + 1, buf[start:stop]))
                else:
                    out.append(self.prefix + buf[start:stop] + b"\n")
        elif mode is not Mode.COUNT:
            self._selected_file(out)
            self.done = True

    def _selected_file(self, out: list[bytes]) -> None:
        if self.mode is Mode.FILES_WITH:
            out.append((self.name or b"(standard input)") + b"\n")
        if self.mode in (Mode.FILES_WITH, Mode.FILES_WITHOUT, Mode.QUIET):
            self.done = True
