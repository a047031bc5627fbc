"""``[tokens]``: bearer-token issuers. (Owned by the tokens package.)"""

from __future__ import annotations

from dataclasses import dataclass

from endpointsec._config import Table

__all__ = ["TokensConfig"]


@dataclass(frozen=True, kw_only=True)
class TokensConfig:
    """Bearer-token configuration; no issuer configured means tokens are not read."""

    @classmethod
    def from_table(cls, t: Table) -> TokensConfig:
        t.finish()
        return cls()
