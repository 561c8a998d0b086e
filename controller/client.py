"""The operator CLI's side of the API: where the controller is and which token
to send (flags, then EDGEWARDEN_CONTROLLER / EDGEWARDEN_TOKEN, then the client
config file), and one call that turns an error answer into a clear message."""

from __future__ import annotations

import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx

ENV_URL = "EDGEWARDEN_CONTROLLER"
ENV_TOKEN = "EDGEWARDEN_TOKEN"
ENV_CONFIG = "EDGEWARDEN_CLIENT_CONFIG"


def default_client_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgewarden" / "client.toml"


class ClientError(Exception):
    """What went wrong talking to the controller; exit_code 2 for bad input (4xx), 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 1, body: Any = None):
        self.exit_code, self.body = exit_code, body
        super().__init__(message)


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None
    source: str     # where url and token came from, for error messages


def resolve_target(url: str | None, token: str | None, config_path: str | None) -> Target:
    path = Path(config_path or os.environ.get(ENV_CONFIG) or default_client_config())
    file_url = file_token = None
    if path.exists():
        try:
            doc = tomllib.loads(path.read_text()).get("controller", {})
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ClientError(f"client config {path}: {err}") from None
        file_url = doc.get("url")
        file_token = doc.get("token")
        if doc.get("token_file") and not file_token:
            try:
                file_token = Path(doc["token_file"]).expanduser().read_text().strip()
            except OSError as err:
                raise ClientError(f"client config {path}: token_file: {err.strerror}") from None
    elif config_path:
        raise ClientError(f"client config {path} does not exist")
    chosen_url = url or os.environ.get(ENV_URL) or file_url
    chosen_token = token or os.environ.get(ENV_TOKEN) or file_token
    if not chosen_url:
        raise ClientError(f"no controller given: pass --controller URL, set {ENV_URL}, or put url = ... under "
                          f"[controller] in {path}", 2)
    return Target(chosen_url.rstrip("/"), chosen_token, str(path))


class Api:
    def __init__(self, target: Target, timeout: float = 900.0):
        self.target = target
        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        self.http = httpx.Client(base_url=target.url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise ClientError(f"cannot reach the controller at {self.target.url}: {err}; is it running? "
                              f"(set it with --controller or {ENV_URL})") from None
        if response.status_code >= 400:
            raise ClientError(_error_text(response), 2 if response.status_code < 500 else 1, _json(response))
        return response

    def json(self, method: str, path: str, **kwargs) -> Any:
        return self.call(method, path, **kwargs).json()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_text(response: httpx.Response) -> str:
    body = _json(response)
    if not isinstance(body, dict):
        return f"controller answered {response.status_code}: {response.text[:500]}"
    lines = [f"{body.get('error', 'error')} (HTTP {response.status_code})"]
    lines += [f"  {p.get('field')}: {p.get('rule')}" for p in body.get("problems", [])]
    if response.status_code == 401:
        lines.append(f"  give an operator token with --token or {ENV_TOKEN}")
    return "\n".join(lines)


def upload_chunks(data: bytes, show_progress: bool, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The body in chunks, drawing a progress bar on stderr when it is a terminal."""
    total = len(data)
    for start in range(0, total, chunk):
        yield data[start:start + chunk]
        if show_progress:
            done = min(start + chunk, total)
            width = 40
            filled = width * done // max(total, 1)
            sys.stderr.write(f"\rupload [{'#' * filled}{'.' * (width - filled)}] {done * 100 // max(total, 1):3d}% "
                             f"{done / 1e6:.1f}/{total / 1e6:.1f} MB")
            sys.stderr.flush()
    if show_progress:
        sys.stderr.write("\nthe controller is storing the list and making the revision...\n")
        sys.stderr.flush()
