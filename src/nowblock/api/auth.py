"""Who may change the block: bearer tokens, kept only as hashes.

A token is a long random string (``python -c "import secrets; print(secrets.token_urlsafe(32))"``);
only its hash ``sha256:<hex>`` (:func:`hash_token`) is written down: in the site file under
``[api] token_hashes = ["sha256:..."]`` or in the environment (``NOWBLOCK_API_TOKEN_HASHES``,
comma-separated). ``NOWBLOCK_API_TOKEN`` may hold a token itself (hashed at start, for
containers with secrets in the environment). A random token of 32 bytes cannot be guessed, so a
plain SHA-256 suffices (a slow password hash protects guessable secrets); comparisons take
constant time. A configured hash of a well-known token ("password", ...) is accepted, with a
WARNING at start: shorter than the 16 characters :func:`hash_token` asks, anyone may guess it.

Reads: ``open`` (anyone who reaches the port), ``local`` (default: clients on the loopback
interface without a token, others with one) or ``token`` (every read needs a token).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable, Mapping

READ_MODES = ("local", "open", "token")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
#: Tokens a guesser tries first; "password" was the hash example of docs/api.md until session 36.
WEAK_TOKENS = ("password", "123456", "12345678", "admin", "secret", "changeme", "token", "test", "THE-TOKEN")
_WEAK = {"sha256:" + hashlib.sha256(t.encode()).hexdigest(): t for t in WEAK_TOKENS}

log = logging.getLogger(__name__)


class TokenConfigError(ValueError):
    """A token hash or read mode that cannot be used (a bad site file key or option)."""


def hash_token(token: str) -> str:
    """The hash of an API token as written in the site file: ``sha256:<64 hex digits>``.

    Parameters
    ----------
    token : str
        The token, at least 16 characters (``secrets.token_urlsafe(32)`` gives 43).

    Returns
    -------
    str
        ``sha256:`` and the 64 hex digits of the token's UTF-8 SHA-256.

    Raises
    ------
    TokenConfigError
        For a token shorter than 16 characters (or not a string).
    """
    if not isinstance(token, str) or len(token) < 16:
        raise TokenConfigError("an API token needs at least 16 characters")
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class TokenCheck:
    """The accepted token hashes and the read mode.

    Parameters
    ----------
    hashes : iterable of str
        ``sha256:<hex>`` hashes of the accepted tokens (none: every write is refused).
    reads : str
        One of :data:`READ_MODES`.
    """

    def __init__(self, hashes: Iterable[str] = (), *, reads: str = "local") -> None:
        hashes = [h.strip().lower() for h in hashes if h and h.strip()]
        bad = [h for h in hashes if not _HASH.match(h)]
        if bad:
            raise TokenConfigError(f"api token hash {bad[0]!r}: expected 'sha256:' and 64 hex digits (see hash_token)")
        if reads not in READ_MODES:
            raise TokenConfigError(f"reads: one of {READ_MODES}, got {reads!r}")
        self.hashes = tuple(dict.fromkeys(hashes))
        self.reads = reads
        for h in self.hashes:
            if h in _WEAK:  # a warning, not a refusal: a running block keeps its API until it is replaced
                log.warning("api token hash %s... is the hash of the well-known token %r: anyone who reaches the "
                            "port may write (caps, dimming, needs); replace it with hash_token() of a random token "
                            "(secrets.token_urlsafe(32))", h[:15], _WEAK[h])

    def verify(self, token: str | None) -> bool:
        """Whether ``token`` is one of the accepted tokens (constant time per hash)."""
        if not token:
            return False
        h = "sha256:" + hashlib.sha256(token.encode()).hexdigest()
        ok = False
        for known in self.hashes:
            ok |= hmac.compare_digest(h, known)
        return ok

    def may_read(self, client_host: str | None, token: str | None) -> bool:
        """Whether a client at ``client_host`` with ``token`` may read."""
        if self.reads == "open":
            return True
        if self.reads == "local" and client_host in _LOOPBACK:
            return True
        return self.verify(token)


def token_hashes(site_extra: Mapping | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    """Accepted token hashes from the site file's ``[api]`` table and the environment."""
    env = os.environ if env is None else env
    out: list[str] = []
    api = (site_extra or {}).get("api", {})
    if not isinstance(api, Mapping):
        raise TokenConfigError("api: expected a table ([api]) in the site file")
    listed = api.get("token_hashes", [])
    if isinstance(listed, str) or not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
        raise TokenConfigError("api.token_hashes: expected a list of 'sha256:...' strings")
    out.extend(listed)
    out.extend(x for x in env.get("NOWBLOCK_API_TOKEN_HASHES", "").split(",") if x.strip())
    if env.get("NOWBLOCK_API_TOKEN"):
        out.append(hash_token(env["NOWBLOCK_API_TOKEN"]))
    return out


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
