"""Path normalization: the Istio/Envoy cases as a table, options, and properties."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from endpointsec.errors import ConfigurationError, PathError
from endpointsec.policy import AllowAuthenticated, PathNormalizer, PathOptions

DEFAULT = PathNormalizer()

# (raw path, normalized) with the default options.
NORMALIZED = [
    # Istio's path-normalization examples: every form of "/public/../private".
    ("istio-dotdot", "/public/../private", "/private"),
    ("istio-encoded-dotdot-lower", "/public/%2e%2e/private", "/private"),
    ("istio-encoded-dotdot-upper", "/public/%2E%2E/private", "/private"),
    ("istio-mixed-encoded-dot", "/public/.%2e/private", "/private"),
    ("istio-double-slash", "//private", "/private"),
    ("istio-encoded-slash-kept", "/public/..%2Fprivate", "/public/..%2Fprivate"),
    ("istio-encoded-slash-lower-kept", "/public/..%2fprivate", "/public/..%2Fprivate"),
    ("istio-backslash", "/public\\..\\private", "/private"),
    ("istio-encoded-backslash-kept", "/public/..%5Cprivate", "/public/..%5Cprivate"),
    ("dot-segment", "/a/./b", "/a/b"),
    ("trailing-dot", "/a/b/.", "/a/b/"),
    ("trailing-dotdot", "/a/b/..", "/a/"),
    ("above-root", "/../../etc/passwd", "/etc/passwd"),
    ("only-dotdot", "/..", "/"),
    ("root", "/", "/"),
    ("merge-many", "/a///b////c", "/a/b/c"),
    ("trailing-slash-kept", "/a/b/", "/a/b/"),
    ("query-stripped", "/a/b?x=../../c", "/a/b"),
    ("fragment-stripped", "/a/b#../c", "/a/b"),
    ("unreserved-decoded", "/%41%62c%2D%5F%7E", "/Abc-_~"),
    ("reserved-kept-uppercased", "/a%3bb%3F", "/a%3Bb%3F"),
    ("percent-kept-no-double-decode", "/a%252Fb", "/a%252Fb"),
    ("double-encoded-dot-kept", "/public/%252e%252e/private", "/public/%252e%252e/private"),
    ("utf8-escapes-kept", "/caf%c3%a9", "/caf%C3%A9"),
    ("raw-utf8-bytes-encoded", "/caf\xc3\xa9", "/caf%C3%A9"),
    ("raw-unsafe-encoded", '/a"b<c>', "/a%22b%3Cc%3E"),
    ("dot-in-name", "/file.txt", "/file.txt"),
    ("dotdot-in-name", "/a/..b/c..", "/a/..b/c.."),
    ("well-known", "/.well-known/x", "/.well-known/x"),
    ("sub-delims-raw", "/a;b=c,d:e@f", "/a;b=c,d:e@f"),
    ("python-str-utf8", "/caf\u00e9\u4e2d".encode().decode("latin-1"), "/caf%C3%A9%E4%B8%AD"),
    ("above-latin1-as-utf8", "/\u4e2d", "/%E4%B8%AD"),
]

REJECTED = [
    ("nul-encoded", "/a%00b", "NUL"),
    ("nul-raw", "/a\x00b", "control"),
    ("control-encoded", "/a%0Ab", "control"),
    ("control-raw", "/a\rb", "control"),
    ("del-encoded", "/a%7f", "control"),
    ("malformed-escape", "/a%G1", "malformed"),
    ("truncated-escape", "/a%4", "truncated"),
    ("lone-percent", "/a%", "truncated"),
    ("overlong-dot", "/%C0%AE%C0%AE/private", "UTF-8"),
    ("invalid-utf8", "/%FF", "UTF-8"),
    ("raw-latin1-not-utf8", "/caf\xe9", "UTF-8"),
    ("empty", "", "empty"),
    ("relative", "a/b", "start with '/'"),
    ("absolute-form", "http://evil/x", "start with '/'"),
    ("asterisk-form", "*", "start with '/'"),
    ("surrogate", "/\ud800", "surrogate"),
]


@pytest.mark.parametrize(("raw", "expected"), [c[1:] for c in NORMALIZED],
                         ids=[c[0] for c in NORMALIZED])
def test_normalize(raw: str, expected: str) -> None:
    assert DEFAULT.normalize(raw) == expected
    assert DEFAULT.normalize(expected) == expected


@pytest.mark.parametrize(("raw", "message"), [c[1:] for c in REJECTED],
                         ids=[c[0] for c in REJECTED])
def test_rejected(raw: str, message: str) -> None:
    with pytest.raises(PathError, match=message):
        DEFAULT.normalize(raw)


OPTIONS = [
    ("no-merge-keeps-double", PathOptions(merge_slashes=False), "//private", "//private"),
    ("no-merge-dotdot-pops-empty", PathOptions(merge_slashes=False), "/a//../b", "/a/b"),
    ("decode-slash", PathOptions(decode_encoded_slashes=True),
     "/public/..%2Fprivate", "/private"),
    ("decode-backslash", PathOptions(decode_encoded_slashes=True),
     "/public/..%5cprivate", "/private"),
    ("decode-and-merge", PathOptions(decode_encoded_slashes=True), "/a%2F%2Fb", "/a/b"),
    ("decode-keeps-double-encoded", PathOptions(decode_encoded_slashes=True),
     "/a%252Fb", "/a%252Fb"),
    ("backslash-keep", PathOptions(backslash="keep"), "/a\\..\\b", "/a%5C..%5Cb"),
    ("backslash-keep-decoded", PathOptions(backslash="keep", decode_encoded_slashes=True),
     "/a%5Cb", "/a%5Cb"),
]


@pytest.mark.parametrize(("options", "raw", "expected"), [c[1:] for c in OPTIONS],
                         ids=[c[0] for c in OPTIONS])
def test_options(options: PathOptions, raw: str, expected: str) -> None:
    n = PathNormalizer(options=options)
    assert n.normalize(raw) == expected
    assert n.normalize(expected) == expected


REJECTED_WITH_OPTIONS = [
    ("reject-encoded-slash", PathOptions(reject_encoded_slashes=True), "/a%2Fb", "encoded"),
    ("reject-encoded-backslash", PathOptions(reject_encoded_slashes=True), "/a%5cb",
     "encoded"),
    ("reject-backslash", PathOptions(backslash="reject"), "/a\\b", "backslash"),
    ("reject-decoded-backslash", PathOptions(backslash="reject",
                                             decode_encoded_slashes=True), "/a%5Cb",
     "backslash"),
]


@pytest.mark.parametrize(("options", "raw", "message"),
                         [c[1:] for c in REJECTED_WITH_OPTIONS],
                         ids=[c[0] for c in REJECTED_WITH_OPTIONS])
def test_rejected_with_options(options: PathOptions, raw: str, message: str) -> None:
    with pytest.raises(PathError, match=message):
        PathNormalizer(options=options).normalize(raw)


def test_invalid_options() -> None:
    with pytest.raises(ConfigurationError, match=r"policy\.paths\.backslash"):
        PathOptions(backslash="drop")
    with pytest.raises(ConfigurationError, match="exclude each other"):
        PathOptions(decode_encoded_slashes=True, reject_encoded_slashes=True)


def test_non_string_is_a_path_error() -> None:
    with pytest.raises(PathError, match="string"):
        DEFAULT.normalize(b"/a")  # type: ignore[arg-type]


def test_allow_authenticated_uses_the_real_normalizer() -> None:
    policy = AllowAuthenticated()
    assert policy.normalize("/public/%2e%2e/private") == "/private"
    with pytest.raises(PathError):
        policy.normalize("/a%00")


# -- properties ---------------------------------------------------------------------------

_PIECES = st.sampled_from([
    "/", "//", "\\", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25", "%252F",
    "%00", "%0", "%zz", "%41", "%C3%A9", "%C0%AE", "%FF", "a", "b", "~", ";", "?", "#",
    "\xe9", "\u4e2d", " ", "\x00", "\t",
])
_PATHS = st.one_of(
    st.lists(_PIECES, max_size=12).map(lambda parts: "/" + "".join(parts)),
    st.lists(_PIECES, max_size=12).map("".join),
    st.text(max_size=40),
    st.text(max_size=40).map(lambda s: "/" + s),
)
_ALL_OPTIONS = st.builds(
    PathOptions,
    merge_slashes=st.booleans(),
    decode_encoded_slashes=st.booleans(),
    backslash=st.sampled_from(["slash", "reject", "keep"]),
) | st.builds(PathOptions, reject_encoded_slashes=st.just(True),
              merge_slashes=st.booleans())


@settings(max_examples=400, deadline=None)
@given(raw=_PATHS, options=_ALL_OPTIONS)
@example(raw="/public/%2e%2e/private", options=PathOptions())
@example(raw="/a/%2e%2E/%2E/..%2F..", options=PathOptions(decode_encoded_slashes=True))
def test_normalize_is_canonical_or_path_error(raw: str, options: PathOptions) -> None:
    n = PathNormalizer(options=options)
    try:
        out = n.normalize(raw)
    except PathError:
        return
    assert out.startswith("/")
    segments = out.split("/")
    assert "." not in segments
    assert ".." not in segments
    assert "?" not in out
    assert "#" not in out
    assert n.normalize(out) == out
    if options.merge_slashes:
        assert "//" not in out
    if options.decode_encoded_slashes:
        assert "%2F" not in out
