"""Shared pieces for the testing-helper tests: a small policy and configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

ORDERS = "spiffe://example.org/ns/shop/sa/orders"
BILLING = "spiffe://example.org/ns/shop/sa/billing"
IDP = "https://idp.example.com"

POLICY = f"""\
p, {ORDERS}, *, /orders/:id, GET, allow
p, role:admin, *, /orders/*, *, allow
p, role:admin, *, /orders/secret, *, deny
g, {IDP}#alice, role:admin, *
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.csv"
    path.write_text(POLICY, encoding="utf-8")
    return path


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a file under tmp_path and return its path."""

    def make(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return make
