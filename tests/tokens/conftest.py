"""Fixtures for the token tests (defined in tokens_helpers.py, shared with the tests)."""

from __future__ import annotations

from tokens_helpers import (  # noqa: F401 - fixtures
    ec_key,
    ed_key,
    jwks_file,
    jwks_server,
    make_verifier,
    rsa_key,
    rsa_key2,
    verifier,
)
