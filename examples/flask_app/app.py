"""The inventory service: a small Flask app protected by endpointsec.

Callers are workloads with SPIFFE IDs in trust domain ``shop.local``; warehouse staff
act through them with bearer tokens carrying roles. The rules are in ``policy.csv``.
Run it over mTLS with ``endpointsec serve app:app --config endpointsec.toml`` (gunicorn).
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue

from endpointsec import load_config
from endpointsec.integrations.flask import EndpointSec, current_principal, public, require

HERE = Path(__file__).resolve().parent
CONFIG = Path(os.environ.get("ENDPOINTSEC_CONFIG", HERE / "endpointsec.toml"))

app = Flask(__name__)
EndpointSec(app, config=load_config(CONFIG))

STOCK: dict[str, int] = {"keyboard": 12, "monitor": 3}


def caller() -> dict[str, object]:
    p = current_principal
    return {
        "peer": p.peer.id if p.peer else None,
        "user": p.request.id if p.request else None,
    }


@app.get("/healthz")
@public
def healthz() -> ResponseReturnValue:
    return {"ok": True}


@app.get("/stock")
def list_stock() -> ResponseReturnValue:
    return {"stock": STOCK, "caller": caller()}


@app.get("/stock/<item>")
def get_item(item: str) -> ResponseReturnValue:
    if item not in STOCK:
        abort(404)
    return {"item": item, "quantity": STOCK[item], "caller": caller()}


@app.post("/stock/<item>")
@require(token="required", roles=["role:warehouse"])
def restock(item: str) -> ResponseReturnValue:
    amount = int((request.get_json(silent=True) or {}).get("add", 1))
    STOCK[item] = STOCK.get(item, 0) + amount
    return jsonify({"item": item, "quantity": STOCK[item], "caller": caller()}), 201
