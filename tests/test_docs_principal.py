"""The documented attributes of RequestPrincipal are the real ones (issuer, not iss)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from endpointsec import PeerIdentity, RequestPrincipal

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_tokens_page_lists_the_real_attributes() -> None:
    text = (DOCS / "tokens.md").read_text(encoding="utf-8")
    section = text.split("## What a handler sees", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([a-z_0-9]+)` \|", section, re.M)
    real = {f.name for f in fields(RequestPrincipal) if not f.name.startswith("_")} | {"id"}
    assert set(documented) == real
    for name in re.findall(r"`([a-z_0-9]+)`", section.split("`principal.peer`", 1)[1]):
        assert hasattr(PeerIdentity, name) or name in {f.name for f in fields(PeerIdentity)}


def test_no_page_reads_claim_names_as_attributes() -> None:
    for page in DOCS.rglob("*.md"):
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"\.request\.(iss|sub|aud|exp)\b", text), page
        assert not re.search(r"RequestPrincipal\(iss=|\.request\.claims\.iss", text), page
