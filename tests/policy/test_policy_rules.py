"""Policy files read line by line: the same rules as Casbin's loader, with line numbers.

A property test holds :func:`read_policy_file` and :func:`split_policy_line` to
Casbin's own ``FileAdapter`` and ``_extract_tokens`` on random files made of the
characters that matter to them (commas, brackets, quotes, ``#``, CR, LF, spaces).
"""

from __future__ import annotations

from pathlib import Path

import casbin
import pytest
from casbin.persist.adapter import _extract_tokens
from hypothesis import event, given, settings
from hypothesis import strategies as st

from endpointsec.policy import DEFAULT_MODEL_PATH
from endpointsec.policy.rules import check_object, read_policy_file, split_policy_line

PIECES = ["p", "g", "P", "q", "p2", ",", ", ", " ", "a", "/x", "*", "#", "[", "]", "(", ")",
          '"', "\r", "\t", "allow", "deny", ":id", "\u00e9"]

VALUES = ["a", "/x", "*", ":id", "allow", "deny", "role:r", " ", "\t", "\u00e9", "/a.b"]
#: Random character soup, and rule-shaped lines with now and then a bracket or a quote.
line_text = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=10).map("".join),
    st.tuples(st.sampled_from(["p", "g", "P", "q", " p", "#p", "", "p2"]),
              st.lists(st.lists(st.sampled_from(VALUES), max_size=3).map("".join),
                       max_size=6),
              st.lists(st.sampled_from(['"', "[", "]", "(", ")", "\r", "#"]), max_size=1),
              st.integers(0, 40)).map(
        lambda t: ", ".join([t[0], *t[1]])[:t[3]] + "".join(t[2])
        + ", ".join([t[0], *t[1]])[t[3]:]),
)


@settings(max_examples=1000, deadline=None)
@given(line=line_text)
def test_split_policy_line_is_casbins_splitting(line: str) -> None:
    line = line.strip()
    try:
        expected = _extract_tokens(line)
    except IndexError:  # Casbin's loader fails on an unbalanced "]" or ")"
        with pytest.raises(ValueError, match="unbalanced"):
            split_policy_line(line)
        return
    assert split_policy_line(line) == expected


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(line_text, max_size=8),
       ending=st.sampled_from(["\n", "\r\n"]))
def test_read_policy_file_is_casbins_reading(tmp_path_factory: pytest.TempPathFactory,
                                             lines: list[str], ending: str) -> None:
    """Every line our scan keeps is the rule Casbin loads, in the same order, and every
    line Casbin would load differently from how it reads (or fail on) is reported."""
    path = tmp_path_factory.mktemp("rules") / "policy.csv"
    path.write_bytes(ending.join(lines).encode())
    ours, findings = read_policy_file(path)
    model = casbin.Model()
    model.load_model(str(DEFAULT_MODEL_PATH))
    try:
        casbin.FileAdapter(str(path)).load_policy(model)
    except IndexError:  # an unbalanced "]" or ")", or a line with no rule type
        event("Casbin fails")
        assert findings
        return
    loaded = [("p", *r) for r in model.model["p"]["p"].policy]
    loaded += [("g", *r) for r in model.model["g"]["g"].policy]
    kept = [(ln.key, *ln.values) for ln in ours]
    if findings:
        event("lines reported")
        # Casbin loads a superset of what we keep (or skips what we report as unknown).
        for rule in kept:
            assert rule in loaded
    else:
        event("clean")
        assert sorted(kept) == sorted(loaded)
        assert [r for r in kept if r[0] == "p"] == [r for r in loaded if r[0] == "p"]
    # Line numbers are the file's own: the line a rule names holds that rule.
    text = path.read_bytes().split(b"\n")
    for ln in ours:
        number = int(ln.where.rsplit(":", 1)[1])
        assert split_policy_line(text[number - 1].decode().strip()) == [ln.key, *ln.values]


@pytest.mark.parametrize(("obj", "refused"), [
    ("/orders/:id", None), ("/orders/:order-id/items", None), ("/admin/*", None), ("*", None),
    ("/", None), ("/file.txt", None), ("orders", None), ("/*", None),
    ("/orders/{id}", "write ':id'"), ("/orders/{id:int}", "write ':id'"),
    ("/a/{", "unbalanced"), ("/internal/x|/admin/*", "'|'"), ("/reports/?.*", "'?'"),
    ("/a[0-9]", "'[]'"), ("/a/(b)", "'()'"), ("/a+", "'+'"), ("^/a$", "'^'"),
    ("/a\\b", "'\\\\'"), ("/a*", "'*' is only"), ("/*/b", "'*' is only"), ("/a/**", "'*' is only"),
    ("/items:batch", "segment 'items:batch'"), ("/:id.json", "segment ':id.json'"),
    ("/:", "segment ':'"), ("orders:read", "segment 'orders:read'"),
])
def test_check_object(obj: str, refused: str | None) -> None:
    why = check_object(obj)
    if refused is None:
        assert why is None, why
    else:
        assert why is not None and refused in why, why


def test_line_numbers_survive_comments_blank_lines_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "policy.csv"
    path.write_bytes(b"# c\r\n\r\n  \r\np, a, *, /x, GET, allow\r\n#p, b\r\ng, a, r, *\r\n")
    lines, findings = read_policy_file(path, label="policy.csv")
    assert findings == []
    assert [(ln.where, ln.key, ln.values) for ln in lines] == [
        ("policy.csv:4", "p", ("a", "*", "/x", "GET", "allow")),
        ("policy.csv:6", "g", ("a", "r", "*")),
    ]


def test_not_utf8_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.csv"
    path.write_bytes(b"p, a, *, /x, GET, allow\np, \xff, *, /y, GET, allow\n")
    lines, findings = read_policy_file(path, label="policy.csv")
    assert [str(f) for f in findings] == ["policy.csv:2: is not UTF-8"]
    assert len(lines) == 1
