"""The HTTP JSON API. Every changing call is one transaction (store.writing)
with a required reason and an audit entry; bad input gets a 4xx naming the
field and the rule; /openapi.json is generated from controller.models."""

# no `from __future__ import annotations`: FastAPI resolves the local Who annotation at definition time
import datetime as dt
import logging
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Engine

from controller import audit, blocklists, registry, revisions, tokens
from controller.errors import ControllerError, Forbidden, Invalid, Problem, Unauthorized
from controller.models import (
    AuditEntry, AuditVerify, BatchOut, BlockAdd, BlockEntryOut, ErrorOut, Removal, RevisionOut, TenantChanged,
    TenantCreate, TenantOut, TenantPatch, TokenCreate, TokenCreated, TokenOut,
)
from controller.ratelimit import FailedAuthLimiter
from controller.revisions import expire_due
from controller.store import reading, writing
from controller.tokens import Role

log = logging.getLogger("edgewarden.controller.api")
MAX_IMPORT_BYTES = 512 * 1024 * 1024
ERRORS = {code: {"model": ErrorOut} for code in (401, 403, 404, 409, 422, 429)}
MAX_ROW_ID = 2**63 - 1          # BIGINT: a larger number must be a 422, not a database error
TenantId = Annotated[int, Path(ge=1, le=2**32 - 1, description="tenant id")]
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
NO_NUL = r"^[^\x00]*$"
RevisionRef = Annotated[str, Path(pattern=r"^(latest|[0-9]{1,18})$", description="a revision number or 'latest'")]


class Caller:
    def __init__(self, name: str, role: Role):
        self.name, self.role = name, role

    def need(self, role: Role) -> "Caller":
        if not self.role.allows(role):
            raise Forbidden(f"this needs the {role.value} role; token {self.name!r} has {self.role.value}")
        return self


class TooManyFailures(ControllerError):
    status = 429

    def __init__(self, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"too many failed authentications from this client; try again in {retry_after:.0f} s")


def _problem_field(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "request"


def create_app(engine: Engine, *, limiter: FailedAuthLimiter | None = None, workflow=None) -> FastAPI:
    """`workflow`: the enforcement workflow (controller.workflow.Workflow) to serve; default one on the
    system clock with the agreement's default rules."""
    from controller.workflow import Workflow
    from controller.workflow.api import workflow_router
    limiter = limiter or FailedAuthLimiter()
    workflow = workflow or Workflow(engine)
    app = FastAPI(title="edgewarden controller", version="1",
                  description="Tenant registry, block lists, operators, audit and policy revisions. "
                              "Authenticate with `Authorization: Bearer TOKEN`.")
    app.state.engine = engine

    @app.exception_handler(ControllerError)
    async def controller_error(_request: Request, err: ControllerError):
        headers = {"Retry-After": f"{err.retry_after:.0f}"} if isinstance(err, TooManyFailures) else None
        if isinstance(err, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(err.as_dict(), status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, err: RequestValidationError):
        problems = []
        for e in err.errors():
            rule = e.get("msg", "invalid").removeprefix("Value error, ")
            problems.append(Problem(_problem_field(e.get("loc", ())), rule))
        return JSONResponse(Invalid(problems).as_dict(), status_code=422)

    def caller(request: Request) -> Caller:
        client = request.client.host if request.client else "unknown"
        wait = limiter.retry_after(client)
        if wait is not None:
            raise TooManyFailures(wait)
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            limiter.failed(client, "no bearer token")
            raise Unauthorized("send the operator token as 'Authorization: Bearer TOKEN' "
                               "(create one with: edgewarden controller token create)")
        try:
            with reading(engine) as conn:
                name, role = tokens.authenticate(conn, token.strip())
        except Unauthorized as err:
            limiter.failed(client, str(err))
            raise
        return Caller(name, role)

    Who = Annotated[Caller, Depends(caller)]
    app.state.workflow = workflow
    app.include_router(workflow_router(workflow, caller))

    def changing():
        """Expiries that are due go first, each its own revision, so the
        change's revision does not carry them."""
        expire_due(engine)

    # --- service --------------------------------------------------------------

    @app.get("/health", tags=["service"])
    def health() -> dict:
        with reading(engine) as conn:
            latest = revisions.list_revisions(conn, 1)
        return {"status": "ok", "revision": latest[0]["revision"] if latest else 0}

    @app.get("/whoami", tags=["service"], responses=ERRORS)
    def whoami(who: Who) -> dict:
        return {"name": who.name, "role": who.role.value}

    # --- tenants --------------------------------------------------------------

    @app.get("/tenants", tags=["tenants"], responses=ERRORS)
    def list_tenants(who: Who) -> list[TenantOut]:
        with reading(engine) as conn:
            return registry.list_tenants(conn)

    @app.post("/tenants", status_code=201, tags=["tenants"], responses=ERRORS)
    def create_tenant(body: TenantCreate, who: Who) -> TenantChanged:
        who.need(Role.OPERATOR)
        changing()
        with writing(engine) as (conn, head):
            record, revision = registry.create_tenant(conn, head, operator=who.name, data=body)
        return TenantChanged(tenant=record, revision=revision)

    @app.get("/tenants/export", tags=["tenants"], responses=ERRORS,
             response_class=Response, description="Tenant records with contacts, filing, domains and state "
                                                  "history, for the authorities (JSON, or CSV in UTF-8 with BOM).")
    def export(who: Who, format: Literal["json", "csv"] = "json") -> Response:
        with reading(engine) as conn:
            records = registry.export_records(conn)
        if format == "csv":
            return Response(registry.export_csv(records), media_type="text/csv; charset=utf-8",
                            headers={"Content-Disposition": 'attachment; filename="tenants.csv"'})
        return Response(registry.export_json(records).encode(), media_type="application/json")

    @app.get("/tenants/{tenant_id}", tags=["tenants"], responses=ERRORS)
    def get_tenant(tenant_id: TenantId, who: Who) -> TenantOut:
        with reading(engine) as conn:
            return registry.get_tenant(conn, tenant_id)

    @app.patch("/tenants/{tenant_id}", tags=["tenants"], responses=ERRORS)
    def update_tenant(tenant_id: TenantId, body: TenantPatch, who: Who) -> TenantChanged:
        who.need(Role.OPERATOR)
        changing()
        with writing(engine) as (conn, head):
            record, revision = registry.update_tenant(conn, head, operator=who.name, role=who.role,
                                                      tenant_id=tenant_id, patch=body)
        return TenantChanged(tenant=record, revision=revision)

    @app.get("/tenants/{tenant_id}/history", tags=["tenants"], responses=ERRORS)
    def tenant_history(tenant_id: TenantId, who: Who) -> list[dict]:
        with reading(engine) as conn:
            registry.get_tenant(conn, tenant_id)
            return registry.state_history(conn, tenant_id)

    # --- block lists ----------------------------------------------------------

    @app.get("/lists/entries", tags=["lists"], responses=ERRORS)
    def list_entries(who: Who, scope: Annotated[str, Query(pattern=r"^(all|global|[1-9][0-9]{0,9})$",
                                                           description="all, global or a tenant id")] = "all",
                     kind: Literal["source", "port"] | None = None, include_ended: bool = False,
                     after_id: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
                     limit: Annotated[int, Query(ge=1, le=100000)] = 1000) -> list[BlockEntryOut]:
        with reading(engine) as conn:
            return blocklists.list_entries(conn, scope=scope, kind=kind, active_only=not include_ended,
                                           after_id=after_id, limit=limit)

    @app.post("/lists/entries", status_code=201, tags=["lists"], responses=ERRORS)
    def add_entries(body: BlockAdd, who: Who) -> BatchOut:
        who.need(Role.OPERATOR)
        changing()
        with writing(engine) as (conn, head):
            return blocklists.add_entries(conn, head, operator=who.name, role=who.role, tenant_id=body.tenant_id,
                                          sources=body.sources, ports=body.ports, reason=body.reason,
                                          expires_at=body.expires_at, evidence=body.evidence,
                                          emergency=body.emergency)

    @app.post("/lists/import", status_code=201, tags=["lists"], responses=ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {"text/plain": {"schema": {
                  "type": "string", "description": "a block-list file, as `edgewarden block load` reads it"}}}}})
    async def import_list(request: Request, who: Who,
                          reason: Annotated[str, Query(min_length=1, max_length=2000, pattern=NO_NUL)],
                          tenant_id: Annotated[int | None, Query(ge=1, le=2**32 - 1)] = None,
                          source: Annotated[str, Query(max_length=500, pattern=NO_NUL)] = "upload",
                          strict: bool = False,
                          expires_at: dt.datetime | None = None,
                          evidence: Annotated[str | None, Query(max_length=500, pattern=NO_NUL)] = None,
                          emergency: bool = False) -> BatchOut:
        who.need(Role.OPERATOR)
        if int(request.headers.get("content-length") or 0) > MAX_IMPORT_BYTES:
            raise Invalid(Problem("body", f"a block list is at most {MAX_IMPORT_BYTES} bytes"))
        data = await request.body()

        def run():
            changing()
            with writing(engine) as (conn, head):
                return blocklists.import_list(conn, head, operator=who.name, role=who.role, tenant_id=tenant_id,
                                              data=data, reason=reason.strip(), source=source, strict=strict,
                                              expires_at=expires_at, evidence=evidence, emergency=emergency)
        return await run_in_threadpool(run)

    @app.post("/lists/entries/{entry_id}/remove", tags=["lists"], responses=ERRORS)
    def remove_entry(entry_id: RowId, body: Removal, who: Who) -> dict:
        who.need(Role.OPERATOR)
        changing()
        with writing(engine) as (conn, head):
            return blocklists.remove_entry(conn, head, operator=who.name, role=who.role, entry_id=entry_id,
                                           reason=body.reason)

    @app.post("/lists/batches/{batch_id}/remove", tags=["lists"], responses=ERRORS)
    def remove_batch(batch_id: RowId, body: Removal, who: Who) -> dict:
        who.need(Role.OPERATOR)
        changing()
        with writing(engine) as (conn, head):
            return blocklists.remove_batch(conn, head, operator=who.name, role=who.role, batch_id=batch_id,
                                           reason=body.reason)

    # --- policy revisions -----------------------------------------------------

    @app.get("/revisions", tags=["policy"], responses=ERRORS)
    def list_revisions(who: Who, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[RevisionOut]:
        with reading(engine) as conn:
            return revisions.list_revisions(conn, limit)

    @app.get("/policy/{revision}", tags=["policy"], responses=ERRORS,
             description="The policy document of a revision, as agent.policy reads it ('latest' for the newest).")
    def get_policy(revision: RevisionRef, who: Who) -> dict:
        with reading(engine) as conn:
            return revisions.load_document(conn, _revision_number(conn, revision))

    @app.get("/policy/{old}/diff/{new}", tags=["policy"], responses=ERRORS)
    def diff_policy(old: RevisionRef, new: RevisionRef, who: Who) -> dict:
        with reading(engine) as conn:
            return revisions.diff_documents(revisions.load_document(conn, _revision_number(conn, old)),
                                            revisions.load_document(conn, _revision_number(conn, new)))

    # --- audit ----------------------------------------------------------------

    @app.get("/audit", tags=["audit"], responses=ERRORS)
    def list_audit(who: Who, tenant_id: Annotated[int | None, Query(ge=1, le=2**32 - 1)] = None,
                   operator: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
                   since: dt.datetime | None = None, until: dt.datetime | None = None,
                   after_seq: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
                   limit: Annotated[int, Query(ge=1, le=10000)] = 100) -> list[AuditEntry]:
        with reading(engine) as conn:
            return audit.list_entries(conn, tenant_id=tenant_id, operator=operator, since=since, until=until,
                                      after_seq=after_seq, limit=limit)

    @app.get("/audit/verify", tags=["audit"], responses=ERRORS)
    def verify_audit(who: Who) -> AuditVerify:
        with reading(engine) as conn:
            return audit.verify(conn).as_dict()

    # --- tokens ---------------------------------------------------------------

    @app.get("/tokens", tags=["tokens"], responses=ERRORS)
    def list_tokens(who: Who) -> list[TokenOut]:
        who.need(Role.ADMIN)
        with reading(engine) as conn:
            return tokens.list_tokens(conn)

    @app.post("/tokens", status_code=201, tags=["tokens"], responses=ERRORS)
    def create_token(body: TokenCreate, who: Who) -> TokenCreated:
        who.need(Role.ADMIN)
        with writing(engine) as (conn, head):
            token, record = tokens.create_token(conn, head, name=body.name, role=Role(body.role),
                                                created_by=who.name, reason=body.reason,
                                                expires_at=_naive(body.expires_at))
        return TokenCreated(token=token, record=record)

    @app.post("/tokens/{name}/revoke", tags=["tokens"], responses=ERRORS)
    def revoke_token(name: Annotated[str, Path(max_length=200, pattern=NO_NUL)], body: Removal, who: Who) -> TokenOut:
        who.need(Role.ADMIN)
        with writing(engine) as (conn, head):
            return tokens.revoke_token(conn, head, name=name, operator=who.name, reason=body.reason)

    return app


def _naive(when: dt.datetime | None) -> dt.datetime | None:
    if when is None or when.tzinfo is None:
        return when
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _revision_number(conn, text: str) -> int:
    if text == "latest":
        latest = revisions.list_revisions(conn, 1)
        if not latest:
            raise revisions.NotFound("no policy revision has been made yet")
        return latest[0]["revision"]
    return int(text)
