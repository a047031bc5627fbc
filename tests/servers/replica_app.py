"""A tiny ASGI app behind endpointsec whose policy lives in PostgreSQL (imported by each
uvicorn worker process). Configured from the environment:

``ENDPOINTSEC_TEST_BUNDLE`` (trust bundle), ``ENDPOINTSEC_TEST_PG_DSN`` (no password),
``ENDPOINTSEC_TEST_PG_TABLE``, ``ENDPOINTSEC_TEST_PG_CHANNEL``; the password comes from
``ENDPOINTSEC_TEST_POLICY_DB_PASSWORD`` through ``database_password_env``.

Routes: every path is decided by the policy; the app answers ``{"pid": ...}``. Two paths
are for the test's own bookkeeping and also need a rule: ``/_decide?path=P`` answers what
this worker's policy decides for the caller on ``GET P`` (and its generation), and
``/_grant?path=P`` adds an allow rule for the caller on ``GET P`` through this worker.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from endpointsec.gatekeeper import Gatekeeper
from endpointsec.identity.config import IdentityConfig
from endpointsec.identity.sources import ASGITLSSource
from endpointsec.identity.verify import X509ChainVerifier
from endpointsec.integrations.asgi import ASGIMiddleware
from endpointsec.policy import CasbinPolicy, PolicyConfig, build_policy
from endpointsec.routing import RouteTable


def make_replica_app() -> Any:
    policy = build_policy(PolicyConfig(
        database=os.environ["ENDPOINTSEC_TEST_PG_DSN"],
        database_password_env="ENDPOINTSEC_TEST_POLICY_DB_PASSWORD",
        table=os.environ["ENDPOINTSEC_TEST_PG_TABLE"],
        channel=os.environ["ENDPOINTSEC_TEST_PG_CHANNEL"],
    ))
    assert isinstance(policy, CasbinPolicy)
    bundle = Path(os.environ["ENDPOINTSEC_TEST_BUNDLE"])
    identity = IdentityConfig(sources=("asgi-tls",), trust_bundles=(bundle,),
                              require_spiffe=True)
    source = ASGITLSSource()
    gatekeeper = Gatekeeper(policy=policy, sources=[source],
                            verifier=X509ChainVerifier(config=identity), routes=RouteTable())

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        peer = scope["endpointsec"].principal.peer.id
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode())
        body: dict[str, Any] = {"pid": os.getpid()}
        if scope["path"] == "/_decide":
            path = query["path"][0]
            body["allowed"] = policy.evaluate(subjects=[peer], resource=path,
                                              action="GET").allowed
            body["generation"] = policy.generation
        elif scope["path"] == "/_grant":
            body["added"] = policy.add_rules([(peer, "*", query["path"][0], "GET", "allow")])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return ASGIMiddleware(app, gatekeeper=gatekeeper)
