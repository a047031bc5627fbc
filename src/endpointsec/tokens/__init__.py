"""Bearer tokens. (Stub: owned by the tokens work.)"""

from __future__ import annotations

from typing import Any

from endpointsec.protocols import TokenVerifier
from endpointsec.tokens.config import TokensConfig

__all__ = ["build_token_reader", "build_token_verifier"]


def build_token_verifier(config: TokensConfig) -> TokenVerifier | None:
    return None


def build_token_reader(config: TokensConfig) -> Any:
    return None
