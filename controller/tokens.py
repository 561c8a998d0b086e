"""Operators' bearer tokens: created once and printed once, stored only as a
sha256 hash, bound to a role, optionally expiring, revocable."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets

from sqlalchemy import Connection, insert, select, update

from controller import audit, schema
from controller.errors import Conflict, Invalid, NotFound, Problem, Unauthorized
from controller.store import utcnow

TOKEN_PREFIX = "ewt_"


class Role(str, enum.Enum):
    VIEWER = "viewer"       # reads
    OPERATOR = "operator"   # changes tenants and lists
    ADMIN = "admin"         # manages tokens, terminations and emergency blocks

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: "Role") -> bool:
        return self.rank >= needed.rank


def hash_token(token: str) -> str:
    # Tokens are 256 random bits: a fast hash is enough, no password stretching needed.
    return hashlib.sha256(token.encode()).hexdigest()


def token_as_dict(row) -> dict:
    return {"name": row["name"], "role": row["role"], "created_at": row["created_at"],
            "created_by": row["created_by"], "expires_at": row["expires_at"], "revoked_at": row["revoked_at"]}


def create_token(conn: Connection, head: dict, *, name: str, role: Role, created_by: str, reason: str,
                 expires_at: dt.datetime | None = None) -> tuple[str, dict]:
    """Returns (the token, its record). The token is not kept anywhere."""
    if not name.strip():
        raise Invalid(Problem("name", "a token needs a non-empty name (who holds it)"))
    if expires_at is not None and expires_at <= utcnow():
        raise Invalid(Problem("expires_at", "the expiry is in the past"))
    if conn.execute(select(schema.tokens.c.id).where(schema.tokens.c.name == name)).first():
        raise Conflict(f"a token named {name!r} exists already; revoke it or pick another name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = {"name": name, "role": Role(role).value, "token_hash": hash_token(token), "created_at": utcnow(),
           "created_by": created_by, "expires_at": expires_at, "revoked_at": None}
    conn.execute(insert(schema.tokens).values(**row))
    record = token_as_dict(row)
    audit.record(conn, head, operator=created_by, action="token.create", target=f"token {name}",
                 reason=reason, after=record)
    return token, record


def revoke_token(conn: Connection, head: dict, *, name: str, operator: str, reason: str) -> dict:
    t = schema.tokens.c
    row = conn.execute(select(schema.tokens).where(t.name == name)).mappings().one_or_none()
    if row is None:
        raise NotFound(f"no token named {name!r}")
    if row["revoked_at"] is not None:
        raise Conflict(f"token {name!r} was revoked already at {row['revoked_at']:%Y-%m-%d %H:%M:%S} UTC")
    now = utcnow()
    conn.execute(update(schema.tokens).where(t.name == name).values(revoked_at=now))
    before = token_as_dict(row)
    after = dict(before, revoked_at=now)
    audit.record(conn, head, operator=operator, action="token.revoke", target=f"token {name}", reason=reason,
                 before=before, after=after)
    return after


def list_tokens(conn: Connection) -> list[dict]:
    return [token_as_dict(r) for r in conn.execute(select(schema.tokens).order_by(schema.tokens.c.name)).mappings()]


def authenticate(conn: Connection, token: str) -> tuple[str, Role]:
    """(operator name, role) of a valid token; Unauthorized saying why not."""
    row = conn.execute(select(schema.tokens).where(schema.tokens.c.token_hash == hash_token(token))
                       ).mappings().one_or_none()
    if row is None:
        raise Unauthorized("unknown token")
    if row["revoked_at"] is not None:
        raise Unauthorized(f"token {row['name']!r} is revoked")
    if row["expires_at"] is not None and row["expires_at"] <= utcnow():
        raise Unauthorized(f"token {row['name']!r} expired")
    return row["name"], Role(row["role"])
