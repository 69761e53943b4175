"""A devpi-server's HTTP API (JSON), as kiln uses it: users, indexes, the files on an index."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from packaging.utils import canonicalize_name

from kiln.errors import MirrorError
from kiln.mirror.layout import IndexConfig


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()


class HTTPRefused(MirrorError):
    """The mirror answered a request with an HTTP error status (other than 404)."""

    def __init__(self, message: str, status: int, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Identity:
    """Who the mirror takes a request's credentials for (devpi's ``authstatus``)."""

    status: str
    """``ok``: the credentials were accepted; ``noauth``: anonymous (none given, or rejected)."""
    user: str

    @property
    def accepted(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class ReleaseFile:
    filename: str
    sha256: str
    url: str


class Devpi:
    """A devpi-server's JSON API."""

    def __init__(self, url: str, auth: Credentials | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.auth = auth
        self.timeout = timeout

    def request(self, method: str, path: str, data: object | None = None) -> dict[str, object] | None:
        """The decoded JSON answer; None for 404."""
        headers = {"Accept": "application/json"}
        body = None
        if data is not None:
            body = json.dumps(data).encode()
            headers["Content-Type"] = "application/json"
        if self.auth:
            headers["Authorization"] = self.auth.header()
        req = urllib.request.Request(f"{self.url}/{path.lstrip('/')}", data=body, headers=headers,
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            detail = _error_message(exc.read())
            if exc.code in (502, 504):
                detail = f"{detail} ({GATEWAY_HINT})"
            raise HTTPRefused(f"{method} {self.url}/{path.lstrip('/')}: HTTP {exc.code} {detail}".rstrip(),
                              exc.code, detail) from None
        except (urllib.error.URLError, OSError) as exc:
            raise MirrorError(f"{self.url}: unreachable ({getattr(exc, 'reason', exc)})") from None
        return json.loads(raw) if raw else {}

    def ping(self) -> bool:
        try:
            return self.request("GET", "+api") is not None
        except MirrorError:
            return False

    def identity(self) -> Identity:
        """Who the mirror takes this client's credentials for. Credentials devpi rejects outright
        (a revoked, expired or forged token) raise HTTPRefused with status 403."""
        res = self.request("GET", "+api") or {}
        result = res.get("result")
        status = result.get("authstatus") if isinstance(result, dict) else None
        if isinstance(status, list) and len(status) >= 2:
            return Identity(str(status[0]), str(status[1]))
        return Identity("noauth", "")

    def serial(self) -> int:
        """The serial of the last change this server has (a replica's lags its primary's)."""
        res = self.request("GET", "+status") or {}
        result = res.get("result")
        serial = result.get("serial", -1) if isinstance(result, dict) else -1
        return int(serial)

    def index(self, name: str) -> dict[str, object] | None:
        """An index's config, without the project list (a mirror's list is huge)."""
        res = self.request("GET", f"{name}?no_projects=")
        return res["result"] if res else None  # type: ignore[return-value]

    def indexes(self, user: str) -> list[str] | None:
        """The names of ``user``'s indexes (``main``, ``cu130-torch2.14``...); None when there is no such user."""
        res = self.request("GET", user)
        if res is None:
            return None
        result = res.get("result")
        indexes = result.get("indexes") if isinstance(result, dict) else None
        return sorted(indexes) if isinstance(indexes, dict) else []

    def ensure_user(self, user: str, password: str) -> None:
        if self.request("GET", user) is None:
            self.request("PUT", user, {"password": password})

    def ensure_index(self, config: IndexConfig) -> bool:
        """Create the index or bring its settings to ``config``; True when anything changed."""
        want = config.to_json()
        have = self.index(config.name)
        if have is None:
            self.request("PUT", config.name, want)
            return True
        if have.get("type") != config.type:
            raise MirrorError(f"{self.url}/{config.name} is a {have.get('type')} index, kiln expects a {config.type}")
        if all(have.get(k) == v for k, v in want.items()):
            return False
        self.request("PATCH", config.name, {**have, **want})
        return True

    def files(self, index: str) -> dict[str, ReleaseFile]:
        """The release files uploaded to ``index`` itself (not its bases), by filename."""
        res = self.request("GET", index)
        if res is None:
            return {}
        result: dict[str, object] = res["result"]  # type: ignore[assignment]
        if result.get("type") != "stage":
            return {}
        out: dict[str, ReleaseFile] = {}
        for project in result.get("projects", []):  # type: ignore[attr-defined]
            proj = self.request("GET", f"{index}/{canonicalize_name(project)}?ignore_bases")
            for verdata in ((proj or {}).get("result") or {}).values():  # type: ignore[attr-defined]
                for link in verdata.get("+links", []):
                    if link.get("rel") != "releasefile":
                        continue
                    href = link["href"]
                    if f"/{index}/+f/" not in urllib.parse.urlparse(href).path:
                        continue
                    name = urllib.parse.unquote(href.rsplit("/", 1)[-1])
                    sha = (link.get("hashes") or {}).get("sha256") or link.get("hash_spec", "").partition("=")[2]
                    out[name] = ReleaseFile(name, sha, href)
        return out


def _error_message(raw: bytes) -> str:
    """devpi's reason for an error, on one line: the JSON ``message`` (its last line: pyramid puts
    "Access was denied to this resource." before the reason) or ``title``, else the body's first line."""
    try:
        data = json.loads(raw)
        lines = [ln.strip() for ln in str(data.get("message", "")).splitlines() if ln.strip()]
        return lines[-1] if lines else str(data.get("title", ""))
    except (ValueError, AttributeError):
        text = raw.decode(errors="replace").strip()
        if title := re.search(r"<title>\s*(?:\d{3}\s+)?([^<]*?)\s*</title>", text, re.IGNORECASE):
            return title.group(1)  # nginx's own error page: "502 Bad Gateway" -> "Bad Gateway"
        return text.splitlines()[0] if text else ""


GATEWAY_HINT = "nginx is up but devpi-server behind it is not answering; see the mirror's server.log"
"""What a 502/504 from kiln's mirror means."""
