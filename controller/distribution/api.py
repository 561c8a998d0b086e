"""The fleet's HTTP routes: GET /fleet, GET /fleet/{node}, POST
/fleet/emergency (admin: pushed ahead of everything, then made a revision),
GET /tenants/{id}/stats (fleet-wide per-tenant rates)."""

# no `from __future__ import annotations`: FastAPI resolves the annotations at definition time
import asyncio
import ipaddress
import uuid
from typing import Annotated, Any, Callable

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from controller.distribution import fleet, reports
from controller.tokens import Role


class EmergencyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    prefixes: list[str] = Field(min_length=1, max_length=1000, description="addresses or CIDRs to block now")
    reason: str = Field(min_length=1, max_length=2000)
    tenant_id: int | None = Field(default=None, ge=1, le=2**32 - 1, description="a tenant's list; default global")


def fleet_router(engine, caller: Callable[..., Any], distributor: Callable[[], Any]) -> APIRouter:
    """`distributor()` returns the running Distributor, or None when this process serves no agents."""
    router = APIRouter(tags=["fleet"])
    Who = Annotated[Any, Depends(caller)]

    def live():
        d = distributor()
        return d.live() if d is not None else None

    @router.get("/fleet")
    def fleet_view(who: Who) -> dict:
        return fleet.fleet_status(engine, live())

    @router.get("/fleet/{node}")
    def fleet_node(node: Annotated[str, Path(max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]{0,62}$")], who: Who) -> dict:
        status = fleet.fleet_status(engine, live(), node)
        return {"latest_revision": status["latest_revision"], **status["nodes"][0]}

    @router.post("/fleet/emergency", status_code=201)
    async def emergency(body: EmergencyIn, who: Who) -> dict:
        who.need(Role.ADMIN)
        from controller import blocklists
        from controller.errors import Invalid, Problem
        from controller.store import writing
        prefixes, problems = [], []
        for i, text in enumerate(body.prefixes):
            try:
                prefixes.append(str(ipaddress.ip_network(text, strict=False)))
            except ValueError as err:
                problems.append(Problem(f"prefixes[{i}]", str(err)))
        if problems:
            raise Invalid(problems, "nothing was sent or changed")
        emergency_id = uuid.uuid4().hex
        d = distributor()
        sent = d.emergency(emergency_id, prefixes, body.reason, body.tenant_id or 0) if d is not None else 0

        def make_revision():
            with writing(engine) as (conn, head):
                return blocklists.add_entries(conn, head, operator=who.name, role=who.role, tenant_id=body.tenant_id,
                                              sources=prefixes, ports=[], reason=body.reason, expires_at=None,
                                              evidence=None, emergency=True)
        batch = await asyncio.to_thread(make_revision)
        return {"emergency_id": emergency_id, "prefixes": prefixes, "sent_to": sent, "batch": batch}

    @router.get("/tenants/{tenant_id}/stats")
    def stats(tenant_id: Annotated[int, Path(ge=1, le=2**32 - 1)], who: Who) -> dict:
        return reports.tenant_stats(engine, tenant_id)

    return router
