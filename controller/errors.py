"""The errors the controller's operations raise; the API maps each to one
HTTP status, the CLI prints them. Every one says what was wrong and where."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: the field (dotted path) and the rule it broke."""

    field: str
    rule: str

    def as_dict(self) -> dict:
        return {"field": self.field, "rule": self.rule}

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class ControllerError(Exception):
    status = 400

    def as_dict(self) -> dict:
        return {"error": str(self)}


class Invalid(ControllerError):
    """The request breaks a rule; nothing was written."""

    status = 422

    def __init__(self, problems: list[Problem] | Problem, summary: str = "invalid request; nothing was changed"):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        self.summary = summary
        super().__init__(summary + ": " + "; ".join(str(p) for p in self.problems))

    def as_dict(self) -> dict:
        return {"error": self.summary, "problems": [p.as_dict() for p in self.problems]}


class NotFound(ControllerError):
    status = 404


class Conflict(ControllerError):
    """Someone else changed the record first (optimistic concurrency), or a unique name is taken."""

    status = 409


class Forbidden(ControllerError):
    status = 403


class Unauthorized(ControllerError):
    status = 401
