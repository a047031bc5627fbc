"""Policy rules line by line: Casbin's own splitting, with line numbers, and the checks
that refuse rules the default model would silently misread.

Casbin's file loader keeps no line numbers, skips a line whose type its model does not
know (``P, ...``, ``q, ...``) without a word, splits on commas outside ``[]``/``()``
without any CSV quoting (a ``"`` stays part of the value) and crashes on an unbalanced
``]`` or ``)``. :func:`read_policy_file` splits the file exactly as Casbin's
``FileAdapter`` does (lines end at ``\\n``, are stripped, ``#`` starts a comment line,
tokens as ``casbin.persist.adapter._extract_tokens``: a property test holds the two
together), keeps each rule's line number and reports what Casbin would not.

:func:`check_rules` checks each rule of the shipped default model and reports **every**
problem, each with its place (``policy.csv:12``, or ``adapter: policy rule 3``):

* the number of values (``p``: 5, ``g``: 3) and the effect (``allow`` or ``deny``);
* the object, a keyMatch2 template: only the documented forms are accepted, ``:name``
  as a whole segment, a final ``/*``, or ``*`` alone. keyMatch2 is a regular expression
  underneath, so any other regex syntax would quietly mean something else than it reads
  (``/internal/x|/admin/*`` is an alternation, ``/reports/?.*`` matches ``/reports``,
  ``/items:batch`` matches ``/itemsX``, ``/a*`` matches ``/aaa``); ``{id}`` is *not* a
  parameter for Casbin (it matches the literal text ``{id}``): write ``:id``. A ``.``
  stays accepted and matches any character, as in Casbin.
* a path object (one starting with ``/``) written as no normalized request path is
  written: a character that the normalizer percent-encodes (a space, ``"``, non-ASCII
  text: ``/reports/q4 draft/*`` never matches ``/reports/q4%20draft/x``), a lower-case
  escape (``%c3%a9``: paths carry ``%C3%A9``) or an escaped unreserved character
  (``%7E``: paths carry ``~``). Such a rule never matches anything, so a deny rule
  written that way silently denied nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from endpointsec.errors import ConfigurationError

__all__ = [
    "DEFAULT_KEYS",
    "Finding",
    "PolicyLine",
    "check_object",
    "check_rules",
    "read_policy_file",
    "refused",
    "split_policy_line",
    "unmatchable_path",
]

#: The rule types of the shipped default model.
DEFAULT_KEYS = frozenset({"p", "g"})
_EFFECTS = ("allow", "deny")
_P_FIELDS = "subject, domain, object, action, allow|deny"
_G_FIELDS = "user, role, domain ('*' for every domain)"
_TOKENS = re.compile(r"[,\[\]\(\)]")
_BRACKET = re.compile(r"[\[\]\(\)]")
#: The accepted objects in one expression: segments that are literal text (``.``
#: included) or a whole ``:name``, and an optional final ``/*``.
_SEGMENT = r"(?::[A-Za-z_][A-Za-z0-9_-]*|[^/:*^$+?{}\[\]\\|()]*)"
_ACCEPTED = re.compile(_SEGMENT + r"(?:/" + _SEGMENT + r")*(?:/\*)?")
_PARAM = re.compile(r":[A-Za-z_][A-Za-z0-9_-]*")
_BRACED = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^{}/]*)?\}")
#: Regular-expression syntax that keyMatch2 would pass through to ``re`` as is.
_REGEX = frozenset("^$+?{}[]\\|()")
#: What a normalized request path holds raw (endpointsec.policy.paths: the unreserved
#: characters and RFC 3986 pchar without "%", plus "/"); everything else is "%XX".
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PATH_RAW = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class PolicyLine:
    """One rule as Casbin reads it: ``key`` (``p``, ``g`` ...) and its values."""

    where: str
    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem with a rule, and where it is (``file:line`` when known)."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class _Unbalanced(ValueError):
    pass


def split_policy_line(line: str) -> list[str] | None:
    """The tokens of one stripped policy line, split as Casbin's loader splits them
    (commas outside ``[]``/``()``); ``None`` for a blank or comment line.

    Raises :class:`ValueError` for an unbalanced ``]`` or ``)`` (where Casbin's own
    loader fails with an ``IndexError``).
    """
    if line == "" or line[:1] == "#":
        return None
    if _BRACKET.search(line) is None:  # the common case: plain commas
        return [t.strip() for t in line.split(",")]
    depth = 0
    tokens: list[str] = []
    start = 0
    for m in _TOKENS.finditer(line):
        c = m.group()
        if c in "[(":
            depth += 1
        elif c in "])":
            if depth == 0:
                raise _Unbalanced(f"unbalanced {c!r} (Casbin's loader fails on it)")
            depth -= 1
        elif depth == 0:
            tokens.append(line[start:m.start()].strip())
            start = m.end()
    tokens.append(line[start:].strip())
    return tokens


def _unclosed(line: str) -> str | None:
    if _BRACKET.search(line) is None:
        return None
    depth = 0
    opened = ""
    for m in _TOKENS.finditer(line):
        c = m.group()
        if c in "[(":
            depth += 1
            opened = opened or c
        elif c in "])":
            depth -= 1
    return opened if depth > 0 else None


def read_policy_file(path: Path, *, keys: Iterable[str] = DEFAULT_KEYS,
                     check_quotes: bool = True, label: str | None = None
                     ) -> tuple[list[PolicyLine], list[Finding]]:
    """The rules of a Casbin policy file, each with its line number, and the lines
    Casbin would misread: not UTF-8, an unbalanced bracket, a quote (``check_quotes``),
    a type the model does not have (Casbin skips those silently). ``label`` names the
    file in each place (default: the path).

    Raises :class:`OSError` when the file cannot be read.
    """
    known = frozenset(keys)
    name = label if label is not None else str(path)
    lines: list[PolicyLine] = []
    findings: list[Finding] = []
    data = path.read_bytes()
    # FileAdapter reads with readline() in binary mode: lines end at b"\n" only.
    for number, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{name}:{number}"
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            findings.append(Finding(where, "is not UTF-8"))
            continue
        try:
            tokens = split_policy_line(text)
        except ValueError as exc:
            findings.append(Finding(where, f"[{text[:120]}]: {exc}"))
            continue
        if tokens is None:
            continue
        key = tokens[0]
        if check_quotes and '"' in text:
            findings.append(Finding(
                where, f"[{text[:120]}] contains a '\"': Casbin does not read CSV quoting, "
                       "the quote would stay part of the value; remove it"))
            continue
        if not key:
            findings.append(Finding(where, f"[{text[:120]}]: the rule type is missing "
                                           "(Casbin's loader fails on it)"))
            continue
        if key not in known:
            kinds = " and ".join(f"'{k}'" for k in sorted(known))
            findings.append(Finding(
                where, f"[{text[:120]}] has rule type {key[:20]!r}, unknown to the model "
                       f"(only {kinds}): Casbin would skip this line without a word"))
            continue
        opened = _unclosed(text)
        if opened is not None:
            # Casbin does not split inside brackets: every later comma joins two values.
            findings.append(Finding(
                where, f"[{text[:120]}]: unbalanced {opened!r} (Casbin would not split the "
                       "values after it)"))
            continue
        lines.append(PolicyLine(where, key, tuple(tokens[1:])))
    return lines, findings


def check_object(obj: str) -> str | None:
    """Why the keyMatch2 object ``obj`` is refused, or ``None`` if it is accepted."""
    if obj == "*" or _ACCEPTED.fullmatch(obj) is not None:
        return None
    m = _BRACED.search(obj)
    if m is not None:
        return (f"'{m.group(0)}' is not a parameter for Casbin's keyMatch2 (it matches the "
                f"literal text '{m.group(0)}'); write ':{m.group(1)}'")
    if obj.count("{") != obj.count("}"):
        return "unbalanced '{' or '}'"
    segments = obj.split("/")
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        bad = sorted(set(seg) & _REGEX)
        if bad:
            return (f"{''.join(bad)!r}: regular-expression syntax is not a keyMatch2 form "
                    "(Casbin would pass it to the regex engine as is); use ':name' for one "
                    "segment, a final '/*' for everything below, or '*' alone")
        if "*" in seg and not (seg == "*" and i == last and i > 0):
            return ("'*' is only a keyMatch2 form as a final '/*' (everything below) or as "
                    "the whole object (Casbin reads any other '*' as a regex repetition)")
        if ":" in seg and not (seg.startswith(":") and _PARAM.fullmatch(seg)):
            return (f"segment {seg[:40]!r}: in keyMatch2 a ':' starts a parameter wherever "
                    "it is (':' up to the next '/' matches anything); use ':name' as a "
                    "whole segment, with a name of letters, digits, '_' or '-'")
    return "not one of the keyMatch2 forms ':name', a final '/*', or '*'"  # pragma: no cover


def unmatchable_path(obj: str) -> str | None:
    """Why the path object ``obj`` can match no normalized request path (a character
    or an escape the normalizer never leaves in a path), or ``None``."""
    if not obj.startswith("/"):
        return None  # a resource name (``resource=`` overrides), not a request path
    i, n = 0, len(obj)
    while i < n:
        c = obj[i]
        if c == "%":
            m = _ESCAPE.match(obj, i)
            if m is None:
                return "a '%' not followed by two hex digits never appears in a request path"
            hex_ = m.group(1)
            if chr(int(hex_, 16)) in _UNRESERVED:
                return (f"'%{hex_}' is decoded in request paths (write "
                        f"{chr(int(hex_, 16))!r})")
            if hex_ != hex_.upper():
                return f"request paths carry upper-case escapes (write '%{hex_.upper()}')"
            i += 3
            continue
        if c not in _PATH_RAW:
            encoded = "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
            return (f"{c!r} is percent-encoded in request paths (write {encoded!r}); as "
                    "written the rule matches nothing")
        i += 1
    return None


def check_rules(lines: Sequence[PolicyLine]) -> list[Finding]:
    """Every problem of the rules of the default model (see the module docstring)."""
    out: list[Finding] = []
    for line in lines:
        text = ", ".join((line.key, *line.values))[:120]
        if line.key == "p":
            if len(line.values) != 5:
                out.append(Finding(line.where, f"[{text}] has {len(line.values)} values "
                                               f"after 'p'; the default model needs 5: "
                                               f"{_P_FIELDS}"))
                continue
            obj, eft = line.values[2], line.values[4]
            if eft not in _EFFECTS:
                out.append(Finding(line.where, f"[{text}] has effect {eft[:40]!r}; use "
                                               "'allow' or 'deny'"))
            why = check_object(obj)
            if why is not None:
                out.append(Finding(line.where, f"[{text}] object {obj[:120]!r} is not a "
                                               f"valid keyMatch2 pattern: {why}"))
            else:
                why = unmatchable_path(obj)
                if why is not None:
                    out.append(Finding(line.where, f"[{text}] object {obj[:120]!r} never "
                                                   f"matches a request path: {why}"))
        elif line.key == "g" and len(line.values) != 3:
            out.append(Finding(line.where, f"[{text}] has {len(line.values)} values after "
                                           f"'g'; the default model needs 3: {_G_FIELDS}"))
    return out


def refused(source: str, findings: Sequence[Finding]) -> ConfigurationError:
    """One :class:`ConfigurationError` listing every finding, one per line."""
    n = len(findings)
    listing = "\n".join(f"  {f}" for f in findings)
    return ConfigurationError(
        f"{n} problem{'s' if n != 1 else ''} in the policy from {source}:\n{listing}",
        key="policy.policy")
