"""Token verification benchmark: endpointsec's JWTVerifier vs pyjwt's own ``jwt.decode``.

Run: ``.venv/bin/python bench/tokens_bench.py``. Prints a table:

* *cold*: a token never seen before (the verified-token cache is bypassed by giving each
  call a distinct token), through every endpointsec check, against ``jwt.decode`` with
  the same key, algorithm, audience and issuer (target ratio <= 1.1x);
* *cached*: the same token again (target <= 3 µs).

Keys and tokens are generated here; nothing secret is stored.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from endpointsec.tokens import IssuerConfig, JWTVerifier, TokensConfig

ISSUER = "https://issuer.example"
AUDIENCE = "api://bench"
N_TOKENS = 2000
ROUNDS = 7


def _timeit(fn: Callable[[int], Any], n: int, repeat: int = 5) -> float:
    """Best-of-``repeat`` mean seconds per call of ``fn(i)`` over ``n`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - start) / n)
    return best


def _bench_one(alg: str, private: Any, impl: Any, tmp: Path) -> tuple[str, float, float,
                                                                      float, float]:
    jwk = json.loads(impl.to_jwk(private.public_key()))
    jwk.update(kid="k1", use="sig", alg=alg)
    path = tmp / f"{alg}.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    now = int(time.time())
    tokens = [jwt.encode({"iss": ISSUER, "sub": f"user-{i}", "aud": AUDIENCE, "iat": now,
                          "exp": now + 3600, "scope": "a b", "roles": ["r"]}, private,
                         algorithm=alg, headers={"kid": "k1"}) for i in range(N_TOKENS)]

    def issuer() -> IssuerConfig:
        return IssuerConfig(issuer=ISSUER, audiences=(AUDIENCE,), algorithms=(alg,),
                            jwks_file=path)

    cold = JWTVerifier(config=TokensConfig(issuers=(issuer(),), cache_size=0))
    cached = JWTVerifier(config=TokensConfig(issuers=(issuer(),)))
    public = private.public_key()
    try:
        for t in tokens[:50]:  # warm up both paths
            cold.verify(t)
            jwt.decode(t, public, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)
        # Interleaved rounds, best of each: fair on a noisy (shared) machine.
        t_pyjwt = t_ours = float("inf")
        for _ in range(ROUNDS):
            t_pyjwt = min(t_pyjwt, _timeit(
                lambda i: jwt.decode(tokens[i], public, algorithms=[alg], audience=AUDIENCE,
                                     issuer=ISSUER), N_TOKENS, repeat=1))
            t_ours = min(t_ours, _timeit(lambda i: cold.verify(tokens[i]), N_TOKENS,
                                         repeat=1))
        one = tokens[0]
        cached.verify(one)
        t_hit = _timeit(lambda i: cached.verify(one), 200_000)
        # Median of single cached calls, for the 3 µs target.
        samples = []
        for _ in range(2000):
            s = time.perf_counter_ns()
            cached.verify(one)
            samples.append(time.perf_counter_ns() - s)
        return (alg, t_pyjwt * 1e6, t_ours * 1e6, t_hit * 1e6,
                statistics.median(samples) / 1000)
    finally:
        cold.close()
        cached.close()


def main() -> None:
    cases: list[tuple[str, Any, Any]] = [
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
        ("ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [_bench_one(alg, private, impl, Path(tmp)) for alg, private, impl in cases]
    print(f"Python {sys.version.split()[0]}, pyjwt {jwt.__version__}, "
          f"{N_TOKENS} distinct tokens per cold run, best of {ROUNDS} interleaved rounds")
    header = (f"{'alg':<6} {'pyjwt decode µs':>16} {'endpointsec cold µs':>20} "
              f"{'ratio':>6} {'cached µs':>10} {'cached p50 µs':>14}")
    print(header)
    print("-" * len(header))
    for alg, p, o, h, med in rows:
        print(f"{alg:<6} {p:>16.1f} {o:>20.1f} {o / p:>5.2f}x {h:>10.3f} {med:>14.3f}")
    print("targets: ratio <= 1.10x, cached <= 3 µs")


if __name__ == "__main__":
    main()
