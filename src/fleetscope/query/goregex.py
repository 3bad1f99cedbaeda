"""Go (RE2) regular expressions in Python: PromQL's regex matchers and ``label_replace``.

PromQL regexes are RE2 syntax, read by Go's ``regexp``. Python's ``re`` reads most of them the
same way; :func:`translate` rewrites what it does not:

- inline flags anywhere (``a(?i)b``, which RE2 applies to the rest of the enclosing group and
  Python 3.11 refuses unless at the very start) become scoped groups (``a(?i:b)``);
- the ungreedy flag ``U`` (Python has none) swaps the greediness of the quantifiers it covers;
- POSIX classes in brackets (``[[:alpha:]]``, ``[[:^digit:]]``), ``\\z``, ``\\Q…\\E``,
  ``\\x{…}`` and the Unicode classes ``\\pL``/``\\pN`` (and their negations).

What RE2 rejects and Python would accept with another meaning (backreferences, lookaround)
raises :class:`ValueError`, as Go's compiler does, and so do the few RE2 features left
(other Unicode classes). :func:`expand` is Go's ``Regexp.ExpandString`` (``$1``, ``${1}``,
``$name``; ``$1x`` means the group named ``1x``).
"""

from __future__ import annotations

import re

_FLAGS = r"([imsU]*(?:-[imsU]*)?)"
_FLAG_GROUP = re.compile(r"\(\?" + _FLAGS + r"\)")
_SCOPED_GROUP = re.compile(r"\(\?" + _FLAGS + ":")
_REPEAT = re.compile(r"\{(\d+)(,\d*)?\}")
_HEX = re.compile(r"\\x\{([0-9a-fA-F]{1,8})\}")
_UNICODE_CLASS = re.compile(r"\\([pP])(?:\{(\^?)(\w+)\}|(\w))")
_POSIX = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7F",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1F\\x7F",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
# Unicode classes Python's re can express: (matching, not matching)
_UNICODE = {"L": (r"[^\W\d_]", r"[\W\d_]"), "N": (r"\d", r"\D"), "Nd": (r"\d", r"\D")}
_NAME_CHAR = re.compile(r"\w")


def compile_anchored(pattern: str) -> re.Pattern[str]:
    """Compile a PromQL regex fully anchored, as Prometheus does (``^(?:…)$``)."""
    return re.compile(r"\A(?:" + translate(pattern) + r")\Z")


def translate(pattern: str) -> str:
    """Rewrite an RE2 pattern into a Python pattern with the same meaning (see module doc)."""
    out, _ = _Translator(pattern).group_body(0, top=True, ungreedy=False)
    return out


class _Translator:
    def __init__(self, pattern: str) -> None:
        self.p = pattern

    def group_body(self, pos: int, *, top: bool, ungreedy: bool) -> tuple[str, int]:
        """Translate the alternatives of a group up to its closing paren (the index returned)."""
        p = self.p
        alternatives: list[str] = []
        current: list[str] = []
        flags: list[str] = []  # Python inline flag sets opened in this group so far
        opened = 0  # scoped flag groups open in the current alternative

        while pos < len(p):
            ch = p[pos]
            if ch == ")":
                if top:
                    raise ValueError(f"unexpected ) at position {pos}")
                break
            if ch == "|":
                current.append(")" * opened)
                alternatives.append("".join(current))
                current = [f"(?{f}:" for f in flags]
                opened = len(flags)
                pos += 1
                continue
            if ch == "(":
                m = _FLAG_GROUP.match(p, pos)
                if m is not None:
                    python_flags, ungreedy = _split_flags(m.group(1), ungreedy)
                    if python_flags:
                        flags.append(python_flags)
                        current.append(f"(?{python_flags}:")
                        opened += 1
                    pos = m.end()
                    continue
                head, inner_ungreedy, pos = self.group_open(pos, ungreedy)
                inner, pos = self.group_body(pos, top=False, ungreedy=inner_ungreedy)
                if pos >= len(p):
                    raise ValueError("missing closing )")
                current.append(head + inner + ")")
                pos += 1
            elif ch == "\\":
                text, pos = self.escape(pos)
                current.append(text)
            elif ch == "[":
                text, pos = self.char_class(pos)
                current.append(text)
            elif ch in "*+?":
                lazy = p.startswith("?", pos + 1)
                current.append(ch + ("?" if lazy != ungreedy else ""))
                pos += 2 if lazy else 1
            elif ch == "{" and (m := _REPEAT.match(p, pos)) is not None:
                lazy = p.startswith("?", m.end())
                current.append(m.group(0) + ("?" if lazy != ungreedy else ""))
                pos = m.end() + (1 if lazy else 0)
            else:
                current.append(re.escape(ch) if ch == "{" else ch)
                pos += 1
        current.append(")" * opened)
        alternatives.append("".join(current))
        return "|".join(alternatives), pos

    def group_open(self, pos: int, ungreedy: bool) -> tuple[str, bool, int]:
        """The opening of a group at ``p[pos] == '('``: (Python text, ungreedy inside, end)."""
        p = self.p
        if p.startswith("(?P<", pos):
            end = p.find(">", pos)
            if end < 0:
                raise ValueError("invalid named capture")
            return p[pos : end + 1], ungreedy, end + 1
        if p.startswith("(?:", pos):
            return "(?:", ungreedy, pos + 3
        m = _SCOPED_GROUP.match(p, pos)
        if m is not None:
            python_flags, inner = _split_flags(m.group(1), ungreedy)
            return (f"(?{python_flags}:" if python_flags else "(?:"), inner, m.end()
        if p.startswith("(?", pos):
            raise ValueError(f"invalid or unsupported Perl syntax: {p[pos : pos + 3]!r}")
        return "(", ungreedy, pos + 1

    def escape(self, pos: int, *, in_class: bool = False) -> tuple[str, int]:
        p = self.p
        if pos + 1 >= len(p):
            raise ValueError("trailing backslash at end of expression")
        nxt = p[pos + 1]
        if nxt == "z" and not in_class:
            return r"\Z", pos + 2
        if nxt == "Q":
            end = p.find(r"\E", pos + 2)
            literal = p[pos + 2 :] if end < 0 else p[pos + 2 : end]
            return re.escape(literal), len(p) if end < 0 else end + 2
        if nxt == "x" and (m := _HEX.match(p, pos)) is not None:
            return f"\\U{int(m.group(1), 16):08x}", m.end()
        if nxt in "pP":
            m = _UNICODE_CLASS.match(p, pos)
            if m is None:
                raise ValueError("invalid Unicode class")
            name = m.group(3) or m.group(4)
            negated = (m.group(1) == "P") != (m.group(2) == "^")
            forms = _UNICODE.get(name)
            if forms is None or (in_class and name == "L"):
                raise ValueError(f"the Unicode class {m.group(0)} is not supported")
            return forms[1 if negated else 0], m.end()
        if nxt.isdigit() and nxt != "0":
            raise ValueError(f"invalid escape sequence: \\{nxt}")
        return p[pos : pos + 2], pos + 2

    def char_class(self, pos: int) -> tuple[str, int]:
        """A bracket expression at ``p[pos] == '['``, POSIX classes expanded."""
        p = self.p
        parts: list[str] = []
        excluded: list[str] = []  # negated POSIX classes: [[:^alpha:]] is "not a letter"
        i = pos + 1
        negated = p.startswith("^", i)
        if negated:
            i += 1
        if p.startswith("]", i):
            parts.append(r"\]")
            i += 1
        while i < len(p):
            ch = p[i]
            if ch == "]":
                return self._bracket(parts, excluded, negated), i + 1
            if ch == "\\":
                text, i = self.escape(i, in_class=True)
                parts.append(text)
                continue
            if p.startswith("[:", i):
                end = p.find(":]", i + 2)
                name = p[i + 2 : end] if end > 0 else ""
                body = _POSIX.get(name.removeprefix("^"))
                if body is not None:
                    (excluded if name.startswith("^") else parts).append(body)
                    i = end + 2
                    continue
            parts.append(r"\[" if ch == "[" else ch)
            i += 1
        raise ValueError("missing closing ]")

    @staticmethod
    def _bracket(parts: list[str], excluded: list[str], negated: bool) -> str:
        if not excluded:
            return "[" + ("^" if negated else "") + "".join(parts) + "]"
        if negated:
            raise ValueError("negated POSIX classes inside [^…] are not supported")
        options = (["[" + "".join(parts) + "]"] if parts else []) + [f"[^{e}]" for e in excluded]
        return "(?:" + "|".join(options) + ")"


def _split_flags(flags: str, ungreedy: bool) -> tuple[str, bool]:
    """RE2 flags as Python flags (without ``U``) and the ungreedy state they leave."""
    on, _, off = flags.partition("-")
    if "U" in on:
        ungreedy = True
    if "U" in off:
        ungreedy = False
    on, off = on.replace("U", ""), off.replace("U", "")
    return (on + ("-" + off if off else "")), ungreedy


def expand(template: str, match: re.Match[str]) -> str:
    """Go's ``Regexp.ExpandString(template, src, match)``."""
    out: list[str] = []
    rest = template
    while True:
        before, sep, after = rest.partition("$")
        out.append(before)
        if not sep:
            break
        rest = after
        if rest.startswith("$"):
            out.append("$")
            rest = rest[1:]
            continue
        parsed = _extract(rest)
        if parsed is None:
            out.append("$")  # malformed: the $ is literal text
            continue
        name, num, rest = parsed
        if num >= 0:
            if num <= (match.re.groups or 0):
                out.append(match.group(num) or "")
        elif name in match.re.groupindex:
            out.append(match.group(name) or "")
    return "".join(out)


def _extract(text: str) -> tuple[str, int, str] | None:
    """Go's ``extract``: a group name or number after ``$`` (braced or not)."""
    if not text:
        return None
    brace = text[0] == "{"
    body = text[1:] if brace else text
    i = 0
    while i < len(body) and _NAME_CHAR.match(body[i]):
        i += 1
    if i == 0:
        return None
    name = body[:i]
    if brace:
        if i >= len(body) or body[i] != "}":
            return None
        i += 1
    num = int(name) if name.isascii() and name.isdigit() and len(name) <= 8 else -1
    if name[0] == "0" and len(name) > 1:
        num = -1
    return name, num, body[i:]
