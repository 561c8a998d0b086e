"""The controller's configuration file (TOML, configs/controller.toml) and its
validation; --listen and --db override it, so a second controller can be
started anywhere without editing a file."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from controller.store import normalise_url

DEFAULT_LISTEN = "127.0.0.1:8470"
DEFAULT_DATABASE = "sqlite:////var/lib/edgewarden/controller.db"
SECTIONS = {
    "controller": {"listen", "database", "log_level", "expiry_interval_seconds"},
    "auth": {"max_failures", "failure_window_seconds"},
    "workflow": {"rules", "workflow_interval_seconds"},
}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class ConfigError(ValueError):
    def __init__(self, source: str, errors: list[str]):
        self.errors = errors
        super().__init__(f"controller config {source} is invalid:\n" + "\n".join(f"  {source}: {e}" for e in errors))


@dataclass(frozen=True)
class Settings:
    listen: str = DEFAULT_LISTEN
    database: str = DEFAULT_DATABASE
    log_level: str = "info"
    expiry_interval_seconds: float = 1.0
    max_failures: int = 10
    failure_window_seconds: float = 60.0
    rules: str = ""                          # the enforcement rule file; "" = the agreement's defaults
    workflow_interval_seconds: float = 1.0   # how often deadlines and the notification outbox are served

    @property
    def host_port(self) -> tuple[str, int]:
        return split_listen(self.listen)


def split_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"listen {text!r} must be HOST:PORT, e.g. 127.0.0.1:8470 or [::1]:8470")
    return host.strip("[]"), int(port)


def validate(settings: Settings, source: str = "<settings>") -> Settings:
    errors = []
    try:
        split_listen(settings.listen)
    except ValueError as err:
        errors.append(f"controller.listen: {err}")
    try:
        url = make_url(normalise_url(settings.database))
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            errors.append(f"controller.database: {settings.database!r} is neither sqlite:///PATH nor postgresql://...")
    except ArgumentError as err:
        errors.append(f"controller.database: {err}")
    if settings.log_level not in LOG_LEVELS:
        errors.append(f"controller.log_level: {settings.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    if not 0.05 <= settings.expiry_interval_seconds <= 3600:
        errors.append("controller.expiry_interval_seconds: must be in 0.05..3600")
    if not 1 <= settings.max_failures <= 100000:
        errors.append("auth.max_failures: must be in 1..100000")
    if not 0.05 <= settings.workflow_interval_seconds <= 3600:
        errors.append("workflow.workflow_interval_seconds: must be in 0.05..3600")
    if not 1 <= settings.failure_window_seconds <= 86400:
        errors.append("auth.failure_window_seconds: must be in 1..86400")
    if errors:
        raise ConfigError(source, errors)
    return settings


def load_settings(path: str | Path | None, *, listen: str | None = None, database: str | None = None) -> Settings:
    settings, source = Settings(), "<defaults>"
    if path is not None:
        source = str(path)
        try:
            doc = tomllib.loads(Path(path).read_text())
        except OSError as err:
            raise ConfigError(source, [f"cannot read: {err.strerror}"]) from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(source, [f"not valid TOML: {err}"]) from None
        errors, values = [], {}
        for section in sorted(set(doc) - set(SECTIONS)):
            errors.append(f"unknown section [{section}] (expected: {', '.join(SECTIONS)})")
        for section, keys in SECTIONS.items():
            table = doc.get(section, {})
            if not isinstance(table, dict):
                errors.append(f"[{section}] must be a table")
                continue
            for key in sorted(set(table) - keys):
                errors.append(f"{section}.{key}: unknown key (expected one of: {', '.join(sorted(keys))})")
            for key in keys & set(table):
                default = getattr(Settings(), key)
                value = table[key]
                if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                    value = float(value)
                if type(value) is not type(default):
                    errors.append(f"{section}.{key}: expected {type(default).__name__}, got {value!r}")
                    continue
                values[key] = value
        settings = Settings(**values)
        if errors:   # report the values' problems too, all in one go
            try:
                validate(settings, source)
            except ConfigError as more:
                errors += more.errors
            raise ConfigError(source, errors)
    if listen is not None:
        settings = replace(settings, listen=listen)
    if database is not None:
        settings = replace(settings, database=database)
    return validate(settings, source)
