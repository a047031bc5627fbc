"""SPIFFE IDs. (Stub: owned by the identity work.)"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SpiffeId"]


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"
