"""POSIX regular expressions as GNU grep 3.8 reads them (C locale), translated to
Python ``re`` patterns on bytes.

POSIX XBD chapter 9 with GNU's extensions: in a BRE ``\\+ \\? \\|`` are operators and
``+ ? | ( ) { }`` are literal; ``* \\+ \\? \\{`` are literal at the start of an expression
(a zero-width escape such as ``\\<`` does not end the start); ``^`` anchors only at an
expression's start and ``$`` only at its end; in an ERE a leading ``*``/``+``/``?``
repeats the empty string and a ``{`` that starts no valid interval is literal.
``\\w \\W \\s \\S \\b \\B \\< \\> \\` \\'`` and back-references ``\\1``-``\\9`` work in both;
bracket expressions take POSIX classes, equivalence classes and collating symbols of
one byte. Errors carry GNU grep's messages. Python's ``re`` searches leftmost-first
rather than leftmost-longest: that changes which text a match covers, never whether a
line has one, and only the latter is asked of these patterns.
"""

from __future__ import annotations

import enum
import re

from ocifs.errors import OcifsError

__all__ = ["PatternError", "Syntax", "translate"]

# RE_DUP_MAX of glibc/gnulib: a larger interval bound is "Regular expression too big".
DUP_MAX = 0x7FFF

_SPECIAL_CLASSES = {
    # C locale (POSIX "POSIX locale" LC_CTYPE); \n is never in a line.
    "alpha": b"A-Za-z",
    "digit": b"0-9",
    "alnum": b"0-9A-Za-z",
    "upper": b"A-Z",
    "lower": b"a-z",
    "space": b" \t\r\v\f\n",
    "blank": b" \t",
    "punct": b"!-/:-@[-`{-~",
    "print": b" -~",
    "graph": b"!-~",
    "cntrl": b"\x00-\x1f\x7f",
    "xdigit": b"0-9A-Fa-f",
}


# What Python may repeat as is: one escaped byte, a bracket, a group.
_ATOMIC = re.compile(r"\\x[0-9a-f]{2}|\[[^\]]*\]|\(.*\)|\\w|\\S", re.DOTALL)


# GNU's escapes; ``\\W`` and ``\\s`` must not match the newline between two lines.
_ESCAPES = {
    "w": "\\w",
    "W": "[^\\w\\n]",
    "s": "[ \\t\\r\\v\\f]",
    "S": "\\S",
    "b": "\\b",
    # Python before 3.14 finds no \B in an empty string; GNU grep finds one there.
    "B": "(?:\\B|^$)",
    "<": "\\b(?=\\w)",
    ">": "\\b(?<=\\w)",
    "`": "^",
    "'": "$",
}
_ZERO_WIDTH = frozenset(_ESCAPES[c] for c in "bB<>`'")


class PatternError(OcifsError):
    """A pattern GNU grep would refuse; the message is grep's (e.g. ``Unmatched [``)."""


class Syntax(enum.Enum):
    """``-G`` (basic, the default), ``-E`` (extended), ``-F`` (fixed strings)."""

    BASIC = "G"
    EXTENDED = "E"
    FIXED = "F"


def _lit(byte: int) -> str:
    return f"\\x{byte:02x}"


def _class_member(byte: int) -> str:
    return f"\\x{byte:02x}"


class _Translator:
    """One pattern (no newline) to a Python regex source; groups numbered from ``base``."""

    def __init__(self, pat: bytes, extended: bool, base: int) -> None:
        self.p = pat
        self.i = 0
        self.ere = extended
        self.base = base
        self.groups = 0
        self.closed: set[int] = set()
        self.depth = 0

    # -- helpers
    def peek(self, k: int = 0) -> int | None:
        j = self.i + k
        return self.p[j] if j < len(self.p) else None

    def at_escaped(self, ch: str) -> bool:
        return self.peek() == 0x5C and self.peek(1) == ord(ch)

    def at_alternation(self) -> bool:
        return self.peek() == ord("|") if self.ere else self.at_escaped("|")

    def at_close(self) -> bool:
        if self.depth == 0:
            return False
        return self.peek() == ord(")") if self.ere else self.at_escaped(")")

    # -- grammar
    def parse(self) -> str:
        out = self.alternation()
        if self.i < len(self.p):
            # Only an unmatched close paren can stop the top level early.
            raise PatternError("Unmatched ) or \\)")
        return out

    def alternation(self) -> str:
        branches = [self.branch()]
        while self.at_alternation():
            self.i += 1 if self.ere else 2
            branches.append(self.branch())
        return "|".join(branches)

    def branch(self) -> str:
        items: list[str] = []
        quantified: list[bool] = []
        start = True  # where BRE takes * \+ \? \{ literally
        first = True  # where BRE takes ^ as an anchor
        while self.i < len(self.p) and not self.at_alternation() and not self.at_close():
            c = self.p[self.i]
            quant = self.quantifier(start)
            if quant is not None:
                if not items:
                    # ERE: a leading repetition operator repeats the empty string.
                    continue
                if quantified[-1] or not _ATOMIC.fullmatch(items[-1]):
                    items[-1] = f"(?:{items[-1]})"
                items[-1] += quant
                quantified[-1] = True
                start = False
                continue
            if c == ord("^") and (self.ere or first):
                self.i += 1
                items.append("^")
                quantified.append(False)
                first = False
                continue  # BRE: still at the start, so a following * is literal
            if c == ord("$") and (self.ere or self.bre_dollar_is_anchor()):
                self.i += 1
                items.append("$")
                quantified.append(False)
                start = first = False
                continue
            items.append(self.atom())
            quantified.append(False)
            # GNU: a zero-width escape (\< \b ...) leaves a BRE's start context as it was.
            start = start and items[-1] in _ZERO_WIDTH
            first = False
        return "".join(items)

    def bre_dollar_is_anchor(self) -> bool:
        self.i += 1
        try:
            return self.i >= len(self.p) or self.at_alternation() or self.at_close()
        finally:
            self.i -= 1

    def quantifier(self, start: bool) -> str | None:
        """Consume a repetition operator at the cursor, if there is one that applies."""
        c = self.peek()
        if self.ere:
            if c in (ord("*"), ord("+"), ord("?")):
                self.i += 1
                return chr(c)
            if c == ord("{"):
                return self.interval(self.i + 1, b"}", ere=True)
            return None
        if start:
            return None
        if c == ord("*"):
            self.i += 1
            return "*"
        if c == 0x5C and self.peek(1) in (ord("+"), ord("?")):
            op = chr(self.p[self.i + 1])
            self.i += 2
            return op
        if c == 0x5C and self.peek(1) == ord("{"):
            return self.interval(self.i + 2, b"\\}", ere=False)
        return None

    def interval(self, j: int, close: bytes, ere: bool) -> str | None:
        m = re.match(rb"(\d*)(,(\d*))?", self.p[j:])
        assert m is not None
        end = j + m.end()
        lo_text, comma, hi_text = m.group(1), m.group(2), m.group(3)
        valid = self.p.startswith(close, end) and (lo_text or comma)
        if not valid:
            if ere:
                return None  # RE_INVALID_INTERVAL_ORD: the { is an ordinary character
            if self.p.find(b"\\}", j) < 0:
                raise PatternError("Unmatched \\{")
            raise PatternError("Invalid content of \\{\\}")
        lo = int(lo_text) if lo_text else 0
        hi = int(hi_text) if hi_text else (None if comma else lo)
        if (hi is not None and hi < lo) or lo > DUP_MAX or (hi or 0) > DUP_MAX:
            if lo > DUP_MAX or (hi or 0) > DUP_MAX:
                raise PatternError("Regular expression too big")
            raise PatternError("Invalid content of \\{\\}")
        self.i = end + len(close)
        return f"{{{lo},{'' if hi is None else hi}}}"

    def atom(self) -> str:
        c = self.p[self.i]
        if c == ord("["):
            return self.bracket()
        if c == ord("."):
            self.i += 1
            return "[^\\n]"
        if self.ere and c == ord("("):
            return self.group(1)
        if c == 0x5C:
            return self.escape()
        self.i += 1
        return _lit(c)

    def group(self, opener_len: int) -> str:
        self.i += opener_len
        self.groups += 1
        number = self.groups
        self.depth += 1
        inner = self.alternation()
        self.depth -= 1
        if self.ere and self.peek() == ord(")"):
            self.i += 1
        elif not self.ere and self.at_escaped(")"):
            self.i += 2
        else:
            raise PatternError("Unmatched ( or \\(")
        self.closed.add(number)
        return f"({inner})"

    def escape(self) -> str:
        nxt = self.peek(1)
        if nxt is None:
            raise PatternError("Trailing backslash")
        ch = chr(nxt)
        if not self.ere and ch == "(":
            return self.group(2)
        if not self.ere and ch in "){}|":
            # \) at top level, \} / \{ where no interval applies, a stray \|.
            if ch == ")":
                raise PatternError("Unmatched ) or \\)")
            if ch == "{":
                self.i += 2
                return _lit(nxt)
        self.i += 2
        if ch.isdigit() and ch != "0":
            n = int(ch)
            if n not in self.closed:
                raise PatternError("Invalid back reference")
            return f"(?:\\{self.base + n})"
        return _ESCAPES.get(ch) or _lit(nxt)

    def bracket(self) -> str:
        j = self.i + 1
        p = self.p
        negate = j < len(p) and p[j] == ord("^")
        if negate:
            j += 1
        parts: list[str] = []
        first = True
        body_start = j
        has_nl = False
        while True:
            if j >= len(p):
                raise PatternError("Unmatched [, [^, [:, [., or [=")
            c = p[j]
            if c == ord("]") and not first:
                content = p[body_start:j]
                if len(content) >= 2 and content[:1] == b":" and content[-1:] == b":":
                    raise PatternError("character class syntax is [[:space:]], not [:space:]")
                j += 1
                break
            first = False
            if c == ord("[") and j + 1 < len(p) and p[j + 1] in b":=.":
                kind = p[j + 1]
                end = p.find(bytes([kind, ord("]")]), j + 2)
                if end < 0:
                    raise PatternError("Unmatched [, [^, [:, [., or [=")
                name = p[j + 2 : end]
                j = end + 2
                if kind == ord(":"):
                    cls = _SPECIAL_CLASSES.get(name.decode("latin-1"))
                    if cls is None:
                        raise PatternError("Invalid character class name")
                    parts.append(_class_text(cls))
                    has_nl = has_nl or name in (b"space", b"cntrl")
                    continue
                if len(name) != 1:
                    raise PatternError("Invalid collation character")
                c = name[0]
                if kind == ord("="):
                    parts.append(_class_member(c))
                    has_nl = has_nl or c == 0x0A
                    continue
            else:
                j += 1
            # c is one byte (plain, or a [.c.] collating symbol): maybe a range start.
            if j + 1 < len(p) and p[j] == ord("-") and p[j + 1] != ord("]"):
                j += 1
                hi = p[j]
                if hi == ord("[") and j + 1 < len(p) and p[j + 1] == ord("."):
                    end = p.find(b".]", j + 2)
                    if end < 0:
                        raise PatternError("Unmatched [, [^, [:, [., or [=")
                    sym = p[j + 2 : end]
                    if len(sym) != 1:
                        raise PatternError("Invalid collation character")
                    hi = sym[0]
                    j = end + 2
                elif hi == ord("[") and j + 1 < len(p) and p[j + 1] in b":=":
                    raise PatternError("Invalid range end")
                else:
                    j += 1
                if hi < c:
                    raise PatternError("Invalid range end")
                if j + 1 < len(p) and p[j] == ord("-") and p[j + 1] != ord("]"):
                    raise PatternError("Invalid range end")
                parts.append(f"{_class_member(c)}-{_class_member(hi)}")
                has_nl = has_nl or c <= 0x0A <= hi
                continue
            parts.append(_class_member(c))
            has_nl = has_nl or c == 0x0A
        self.i = j
        body = "".join(parts)
        if negate:
            return f"[^{body}\\n]"
        # A line never holds a newline: keep the class from matching one.
        return f"(?:(?!\\n)[{body}])" if has_nl else f"[{body}]"


def _class_text(spec: bytes) -> str:
    out = []
    k = 0
    while k < len(spec):
        if k + 2 < len(spec) and spec[k + 1] == ord("-"):
            out.append(f"{_class_member(spec[k])}-{_class_member(spec[k + 2])}")
            k += 3
        else:
            out.append(_class_member(spec[k]))
            k += 1
    return "".join(out)


def translate(pattern: bytes, syntax: Syntax, base: int = 0) -> tuple[str, int]:
    """Python regex source (for a bytes pattern, MULTILINE) matching what GNU grep's
    ``pattern`` (one line, no newline) matches inside a line, and its group count.

    Groups are numbered from ``base + 1``. Raises :class:`PatternError` with GNU grep's
    message for a pattern grep refuses.
    """
    if syntax is Syntax.FIXED:
        return "".join(_lit(b) for b in pattern), 0
    t = _Translator(pattern, syntax is Syntax.EXTENDED, base)
    return t.parse(), t.groups
