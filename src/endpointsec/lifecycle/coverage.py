"""Policy coverage: which policy lines decided something, and which never did.

A decision names the rule that decided it (``Decision.matched_rule``, a tuple such as
``("p", "role:reader", "*", "/orders/:id", "GET", "allow")``); :class:`Coverage` maps
it back to the ``file:line`` it came from. Only ``p`` lines count: a ``g`` line never
decides on its own. A rule written twice counts on its first line; the second
never decides and is listed as unused (``endpointsec check`` reports it too).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from endpointsec.errors import ConfigurationError

__all__ = ["Coverage", "PolicyLine", "read_policy_lines"]


@dataclass(frozen=True, slots=True)
class PolicyLine:
    """One rule of a policy file and where it is."""

    file: str
    number: int
    rule: tuple[str, ...]

    @property
    def where(self) -> str:
        """``policy.csv:12``."""
        return f"{self.file}:{self.number}"

    def __str__(self) -> str:
        return f"{self.where}  {', '.join(self.rule)}"


def _shown(path: Path) -> str:
    """The path relative to the working directory when it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def read_policy_lines(path: str | Path) -> list[PolicyLine]:
    """The ``p`` rules of a Casbin CSV policy with their line numbers (comments and
    blank lines skipped, values stripped as Casbin strips them)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read policy {p}: {exc}", key="policy") from None
    out: list[PolicyLine] = []
    for number, row in enumerate(csv.reader(text.splitlines(), skipinitialspace=True), 1):
        if not row or row[0].lstrip().startswith("#"):
            continue
        rule = tuple(c.strip() for c in row)
        if rule[0] == "p" or (rule[0].startswith("p") and rule[0][1:].isdigit()):
            out.append(PolicyLine(file=_shown(p), number=number, rule=rule))
    return out


class Coverage:
    """Counts, per policy line, the decisions it made."""

    def __init__(self, policies: Iterable[str | Path]) -> None:
        self.lines: list[PolicyLine] = []
        self._by_rule: dict[tuple[str, ...], PolicyLine] = {}
        seen: set[str] = set()
        for path in policies:
            key = str(Path(path).resolve())
            if key in seen:
                continue
            seen.add(key)
            for line in read_policy_lines(path):
                self.lines.append(line)
                self._by_rule.setdefault(line.rule, line)
        self.used: Counter[PolicyLine] = Counter()
        #: Decisions whose rule is in none of the files (another policy decided them).
        self.foreign = 0
        self.decisions = 0

    def add(self, matched_rule: Sequence[str] | None, count: int = 1) -> None:
        """Record ``count`` decisions made by ``matched_rule`` (``None``: no rule)."""
        self.decisions += count
        if matched_rule is None:
            return
        line = self._by_rule.get(tuple(matched_rule))
        if line is None:
            self.foreign += count
        else:
            self.used[line] += count

    @property
    def unused(self) -> list[PolicyLine]:
        """The lines that decided nothing, in file order."""
        return [line for line in self.lines if line not in self.used]

    @property
    def percent(self) -> float:
        """Share of rules that decided at least once (100 for a policy without rules)."""
        if not self.lines:
            return 100.0
        used = sum(1 for line in self.lines if line in self.used)
        return 100.0 * used / len(self.lines)

    def render(self, *, what: str = "decided at least one case", verbose: bool = False) -> str:
        """A summary line, then the unused lines (and with ``verbose`` the used ones)."""
        used = len(self.lines) - len(self.unused)
        out = [f"policy coverage: {used} of {len(self.lines)} rules {what} "
               f"({self.percent:.1f}%)"]
        if verbose:
            for line in self.lines:
                if line in self.used:
                    out.append(f"  used {self.used[line]:>5}x  {line}")
        for line in self.unused:
            out.append(f"  unused       {line}")
        return "\n".join(out)
