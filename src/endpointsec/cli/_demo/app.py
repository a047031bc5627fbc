"""The orders service: a small FastAPI app protected by endpointsec.

Callers are workloads with SPIFFE IDs (``web`` and ``admin-console`` in trust domain
``shop.local``), optionally acting for a user with a bearer token. The rules are in
``policy.csv``; the requirements per route in ``endpointsec.toml`` and below.
Run it over mTLS with ``endpointsec serve app:app --config endpointsec.toml``.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Security, WebSocket
from pydantic import BaseModel

from endpointsec import Principal, load_config
from endpointsec.integrations.fastapi import EndpointSec

HERE = Path(__file__).resolve().parent
CONFIG = Path(os.environ.get("ENDPOINTSEC_CONFIG", HERE / "endpointsec.toml"))

sec = EndpointSec(config=load_config(CONFIG))
app = FastAPI(title="orders", version="1.0")
sec.install(app)

ORDERS: dict[int, dict[str, object]] = {
    1: {"id": 1, "item": "keyboard", "quantity": 1},
    2: {"id": 2, "item": "monitor", "quantity": 2},
}


class NewOrder(BaseModel):
    item: str
    quantity: int = 1


def caller_of(p: Principal) -> dict[str, object]:
    return {
        "peer": p.peer.id if p.peer else None,
        "user": p.request.id if p.request else None,
        "roles": sorted(p.request.roles) if p.request else [],
    }


@app.get("/healthz")
@sec.public
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.get("/orders")
async def list_orders(caller: Principal = Security(sec.principal)) -> dict[str, object]:
    return {"orders": list(ORDERS.values()), "caller": caller_of(caller)}


@app.get("/orders/{order_id}")
async def get_order(order_id: int,
                    caller: Principal = Security(sec.principal)) -> dict[str, object]:
    return {"order": ORDERS.get(order_id), "caller": caller_of(caller)}


@app.post("/orders", status_code=201)
async def create_order(order: NewOrder,
                       caller: Principal = Security(sec.require(token="required"))
                       ) -> dict[str, object]:
    order_id = max(ORDERS, default=0) + 1
    ORDERS[order_id] = {"id": order_id, **order.model_dump()}
    return {"order": ORDERS[order_id], "caller": caller_of(caller)}


@app.delete("/orders/{order_id}")
async def cancel_order(order_id: int,
                       caller: Principal = Security(sec.require(roles=["role:admin"]))
                       ) -> dict[str, object]:
    return {"cancelled": ORDERS.pop(order_id, None) is not None, "caller": caller_of(caller)}


@app.get("/admin/stats")
async def stats(caller: Principal = Security(sec.principal)) -> dict[str, object]:
    return {"orders": len(ORDERS), "caller": caller_of(caller)}


@app.websocket("/orders/feed")
async def feed(websocket: WebSocket, caller: Principal = Security(sec.principal)) -> None:
    await websocket.accept()
    await websocket.send_json({"hello": caller_of(caller)})
    await websocket.close()
