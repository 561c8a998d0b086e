"""The request and response models of the API. FastAPI validates requests with
them and generates /openapi.json from them, so the description cannot drift
from what is enforced. Rules that need the policy model (VIPs, flood
settings) are checked by compiling the policy (controller.revisions)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from controller.icp import icp_problem

MAX_TENANT_ID = 2**32 - 1
# The store keeps naive UTC; a time without a zone, in or out, is UTC.
UtcTime = Annotated[dt.datetime, AfterValidator(lambda v: v if v.tzinfo else v.replace(tzinfo=dt.timezone.utc))]
TenantStateName = Literal["active", "suspended", "terminated"]
RoleName = Literal["viewer", "operator", "admin"]

_EMAIL = re.compile(r"[^@\s]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")
_PHONE = re.compile(r"\+?[0-9][0-9 ()-]{4,38}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_URL = re.compile(r"https?://[^\s/?#]+[^\s]*")


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, (list, tuple)):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*")
    @classmethod
    def no_nul(cls, value):
        # PostgreSQL text cannot hold NUL; refuse it the same on every store
        if _has_nul(value):
            raise ValueError("must not contain NUL characters")
        return value


Reason = Field(min_length=1, max_length=2000, description="why: required on every changing call, kept in the audit trail")


class Contact(Strict):
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(max_length=254)
    phone: str = Field(max_length=40)
    webhook_url: str | None = Field(default=None, max_length=2000)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        if not _EMAIL.fullmatch(v):
            raise ValueError("must be an e-mail address like security@example.com")
        return v

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str) -> str:
        if not _PHONE.fullmatch(v):
            raise ValueError("must be a phone number: digits, spaces, '-', '()', an optional leading '+', 5 to 39 characters")
        return v

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not _URL.fullmatch(v):
            raise ValueError("must be an http:// or https:// URL")
        return v


def domain_problem(name: str) -> str | None:
    try:
        ascii_name = name.encode("idna").decode()
    except UnicodeError:
        return "is not a valid (internationalised) domain name"
    if len(ascii_name) > 253 or "." not in ascii_name:
        return "must be a fully qualified domain name like www.example.cn (at most 253 characters)"
    labels = ascii_name.rstrip(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "labels are letters, digits and '-', 1 to 63 characters, not starting or ending with '-'"
    return None


def _check_domains(values: list[str]) -> list[str]:
    out = []
    for i, v in enumerate(values):
        v = v.strip().lower().rstrip(".")
        problem = domain_problem(v)
        if problem:
            raise ValueError(f"domains[{i}] {v!r} {problem}")
        if v in out:
            raise ValueError(f"domains[{i}] {v!r} is listed twice")
        out.append(v)
    return out


def _check_icp(v: str) -> str:
    problem = icp_problem(v)
    if problem:
        raise ValueError(problem)
    return v


class VipPort(Strict):
    address: str
    protocol: Literal["tcp", "udp"]
    port: int = Field(ge=1, le=65535)


Vip = str | VipPort


class TenantCreate(Strict):
    id: int | None = Field(default=None, ge=1, le=MAX_TENANT_ID, description="assigned by the controller if omitted")
    name: str = Field(min_length=1, max_length=200)
    icp_filing: str = Field(description="ICP filing number (备案号), e.g. 京ICP备12345678号-1")
    domains: list[str] = Field(default_factory=list, max_length=1000)
    vips: list[Vip] = Field(default_factory=list, max_length=10000,
                            description="addresses, or {address, protocol, port}, as in the policy document")
    flood: dict[str, Any] = Field(default_factory=dict, description="flood settings as in the policy document's [tenants.flood]")
    state: Literal["active", "suspended"] = "active"
    contacts: list[Contact] = Field(min_length=1, max_length=50, description="security contacts (at least one)")
    reason: str = Reason

    @field_validator("icp_filing")
    @classmethod
    def icp_rule(cls, v: str) -> str:
        return _check_icp(v)

    @field_validator("domains")
    @classmethod
    def domain_rule(cls, v: list[str]) -> list[str]:
        return _check_domains(v)


class TenantPatch(Strict):
    version: int = Field(ge=1, description="the version you read; a stale one gets 409 and changes nothing")
    reason: str = Reason
    name: str | None = Field(default=None, min_length=1, max_length=200)
    icp_filing: str | None = None
    domains: list[str] | None = Field(default=None, max_length=1000)
    vips: list[Vip] | None = Field(default=None, max_length=10000)
    flood: dict[str, Any] | None = None
    state: TenantStateName | None = Field(default=None, description="to or from 'terminated' needs the admin role")
    contacts: list[Contact] | None = Field(default=None, min_length=1, max_length=50)

    @field_validator("icp_filing")
    @classmethod
    def icp_rule(cls, v: str | None) -> str | None:
        return v if v is None else _check_icp(v)

    @field_validator("domains")
    @classmethod
    def domain_rule(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else _check_domains(v)


class StateChange(BaseModel):
    at: UtcTime
    state: str
    operator: str
    reason: str


class TenantOut(BaseModel):
    id: int
    name: str
    state: TenantStateName
    icp_filing: str
    domains: list[str]
    vips: list[Vip]
    flood: dict[str, Any]
    contacts: list[Contact]
    watch: bool = Field(default=False, description="on the watch list (clause 七.4), set by the enforcement workflow")
    version: int
    created_at: UtcTime
    updated_at: UtcTime


class TenantChanged(BaseModel):
    tenant: TenantOut
    revision: int | None = Field(description="the policy revision this change made, or null if it changes no policy")


class BlockAdd(Strict):
    tenant_id: int | None = Field(default=None, ge=1, le=MAX_TENANT_ID, description="omit for the global list")
    sources: list[str] = Field(default_factory=list, max_length=100000,
                               description="addresses, CIDR prefixes or ranges a-b, as in a block-list file")
    ports: list[str] = Field(default_factory=list, max_length=1000, description="'tcp/25' or 'udp/6000-6010'")
    reason: str = Reason
    expires_at: UtcTime | None = Field(default=None, description="ISO 8601; the entries leave the policy then")
    evidence: str | None = Field(default=None, max_length=500, description="reference to sealed evidence")
    emergency: bool = Field(default=False, description="an emergency block (clause 十一); needs the admin role")


class BatchOut(BaseModel):
    batch_id: int
    tenant_id: int | None
    entries: int
    entries_read: int = 0
    bad_lines: list[dict] = Field(default_factory=list, description="[{line, reason, text}] lines skipped")
    revision: int | None


class Removal(Strict):
    reason: str = Reason


class BlockEntryOut(BaseModel):
    id: int
    batch_id: int
    tenant_id: int | None
    kind: Literal["source", "port"]
    value: str
    reason: str
    operator: str
    created_at: UtcTime
    expires_at: UtcTime | None
    evidence: str | None
    emergency: bool
    removed_at: UtcTime | None
    expired_at: UtcTime | None


class RevisionOut(BaseModel):
    revision: int
    created_at: UtcTime
    operator: str
    reason: str
    audit_seq: int
    tenants: int
    global_sources: int


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    role: RoleName
    expires_at: UtcTime | None = None
    reason: str = Reason


class TokenOut(BaseModel):
    name: str
    role: RoleName
    created_at: UtcTime
    created_by: str
    expires_at: UtcTime | None
    revoked_at: UtcTime | None


class TokenCreated(BaseModel):
    token: str = Field(description="shown once; only its hash is stored")
    record: TokenOut


class AuditEntry(BaseModel):
    seq: int
    at: str
    operator: str
    action: str
    tenant_id: int | None
    target: str
    before: Any
    after: Any
    reason: str
    prev_hash: str
    hash: str


class AuditVerify(BaseModel):
    entries: int
    intact: bool
    problems: list[str]


class ErrorOut(BaseModel):
    error: str
    problems: list[dict] = Field(default_factory=list, description="[{field, rule}]")
