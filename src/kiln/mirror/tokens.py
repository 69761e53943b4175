"""Upload tokens: what CI publishes with instead of the kiln user's password.

`kiln token` has root issue a devpi-tokens token (a macaroon) of user ``kiln`` that may read and
upload (``allowed=pkg_read,upload``), optionally only to some kiln indexes, until it expires.
devpi-server checks it on every request (the devpi-tokens plugin): a token never creates users
or indexes, changes an index or deletes anything, whatever its user may do with a password.
Root lists and revokes them; a revoked token is refused at once (HTTP 403).

`uv publish --token` sends the user name ``__token__``, as for the public index; the devpi-server
hook at the end of this module takes that name for the token's own user, so both
``uv publish --token T`` and ``uv publish --username kiln --password T`` work.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pluggy import HookimplMarker

from kiln.errors import KilnError, MirrorError
from kiln.mirror.api import Credentials, Devpi
from kiln.mirror.layout import USER, index_name

if TYPE_CHECKING:
    from rich.table import Table

PERMISSIONS = ("pkg_read", "upload")
"""What a token of kiln's may do: read (a token's denials apply to reads too) and upload."""
TOKEN_USERNAME = "__token__"
"""The user name `uv publish --token` (and twine) send with a token."""
MAX_DAYS = 366
"""devpi-tokens' own limit for a token that expires."""

hookimpl = HookimplMarker("devpiserver")


@dataclass(frozen=True)
class Issued:
    """A token as `kiln token` issues it; ``token`` is shown once and kept nowhere by kiln."""

    token: str
    id: str
    user: str
    expires: datetime
    indexes: tuple[str, ...]


@dataclass(frozen=True)
class TokenInfo:
    """A token the mirror holds for a user (never the token itself)."""

    id: str
    expires: datetime | None
    allowed: tuple[str, ...]
    indexes: tuple[str, ...]


@dataclass(frozen=True)
class Parsed:
    """What a token says of itself (its caveats are readable; only the mirror can check them)."""

    user: str
    id: str
    indexes: tuple[str, ...] | None
    """The only indexes it may be used on; None: any."""


def parse(token: str) -> Parsed:
    """What a devpi-tokens token names; MirrorError when it is no such token."""
    from pymacaroons import Macaroon  # type: ignore[import-untyped]
    from pymacaroons.exceptions import MacaroonDeserializationException  # type: ignore[import-untyped]

    try:
        macaroon = Macaroon.deserialize(token.removeprefix("devpi-"))
        user, _, token_id = macaroon.identifier.decode("ascii").rpartition("-")
        caveats = [str(c.to_dict()["cid"]) for c in macaroon.caveats]
    except (MacaroonDeserializationException, ValueError, UnicodeDecodeError, AttributeError, IndexError,
            KeyError, TypeError):
        raise MirrorError("KILN_MIRROR_TOKEN is not a token `kiln token` issued") from None
    if not user or not token_id:
        raise MirrorError("KILN_MIRROR_TOKEN is not a token `kiln token` issued")
    restricted = [set(c.partition("=")[2].split(",")) for c in caveats if c.startswith("indexes=")]
    indexes = tuple(sorted(set.intersection(*restricted))) if restricted else None
    return Parsed(user, token_id, indexes)


def credentials(token: str) -> Credentials:
    """How kiln sends a token: as the password of the user it names."""
    return Credentials(parse(token).user, token)


def create(url: str, root: Credentials, days: int = 90, variants: list[str] | None = None,
           user: str = USER) -> Issued:
    """Have the mirror issue an upload token of ``user`` that expires in ``days`` (only for the
    indexes of ``variants`` when given)."""
    if not 1 <= days <= MAX_DAYS:
        raise KilnError(f"--days {days}: a token lives 1 to {MAX_DAYS} days")
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
    indexes = tuple(sorted(index_name(v) for v in variants or ()))
    body: dict[str, object] = {"allowed": list(PERMISSIONS), "expires": int(expires.timestamp())}
    if indexes:
        body["indexes"] = list(indexes)
    res = Devpi(url, root).request("POST", f"{user}/+token-create", body)
    if res is None:
        raise MirrorError(f"{url} issues no tokens: install devpi-tokens beside its devpi-server "
                          "(kiln's dependencies have it)")
    result = res.get("result")
    token = str(result.get("token", "")) if isinstance(result, dict) else ""
    return Issued(token, parse(token).id, user, expires, indexes)


def tokens(url: str, root: Credentials, user: str = USER) -> list[TokenInfo]:
    """The tokens the mirror holds for ``user``, soonest to expire first."""
    res = Devpi(url, root).request("GET", f"{user}/+tokens")
    if res is None:
        raise MirrorError(f"{url} issues no tokens: install devpi-tokens beside its devpi-server")
    result = res.get("result")
    found = result.get("tokens") if isinstance(result, dict) else None
    out = [_info(str(token_id), [str(r) for r in info.get("restrictions", [])] if isinstance(info, dict) else [])
           for token_id, info in (found.items() if isinstance(found, dict) else [])]
    return sorted(out, key=lambda t: (t.expires or datetime.max.replace(tzinfo=UTC), t.id))


def table(found: list[TokenInfo], now: datetime | None = None) -> Table:
    """`kiln token list`: id, expiry (said when past), what each may do, and on which indexes."""
    from rich.table import Table

    now = now or datetime.now(UTC)
    out = Table("id", "expires", "may", "indexes")
    for t in found:
        expired = " (expired)" if t.expires and t.expires <= now else ""
        when = f"{t.expires:%Y-%m-%d %H:%M} UTC{expired}" if t.expires else "never"
        out.add_row(t.id, when, ",".join(t.allowed) or "anything its user may", ",".join(t.indexes) or "any")
    return out


def _info(token_id: str, restrictions: list[str]) -> TokenInfo:
    values = dict(r.split("=", 1) for r in restrictions if "=" in r)
    expires = values.get("expires")
    when = datetime.fromtimestamp(int(expires), UTC) if expires and expires.isdigit() else None
    return TokenInfo(token_id, when, tuple(filter(None, values.get("allowed", "").split(","))),
                     tuple(filter(None, values.get("indexes", "").split(","))))


def revoke(url: str, root: Credentials, token_id: str, user: str = USER) -> None:
    """Delete a token on the mirror: it is refused from then on."""
    if Devpi(url, root).request("DELETE", f"{user}/+tokens/{token_id}") is None:
        raise MirrorError(f"{url}: user {user} has no token {token_id} (`kiln token list` shows them)")


# ----------------------------------------------------------------------------- in devpi-server


@hookimpl(tryfirst=True)
def devpiserver_get_identity(request: Any, credentials: tuple[str, str] | None) -> Any:
    """A token sent with the user name ``__token__`` is checked as the token of its own user."""
    if credentials is None or credentials[0] != TOKEN_USERNAME:
        return None
    try:
        from devpi_tokens.server import devpiserver_get_identity as token_identity  # type: ignore[import-untyped]
    except ImportError:
        return None
    return token_identity(request, ("", credentials[1]))
