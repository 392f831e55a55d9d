"""OCPP security profile 1 (HTTP Basic) passwords, stored hashed in the site file.

A charge point's ``password_hash`` (site key ``password_hash`` of a ``[[charge_points]]``
entry) has the form::

    scrypt$<n>$<r>$<p>$<salt, base64>$<key, base64>

The key is :func:`hashlib.scrypt` of the UTF-8 password with that salt and cost, 32 bytes
long. Produce one with :func:`hash_password` (or ``python -m nowblock.ocpp.auth PASSWORD``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys

_SCHEME = "scrypt"
_KEY_BYTES = 32


def hash_password(password: str, *, salt: bytes | None = None, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """Hash ``password`` for the site file's ``password_hash`` key (format in the module doc).

    ``n``, ``r``, ``p`` are scrypt's cost parameters; the defaults take about 30 ms, which
    is paid once per connection attempt, not per message.
    """
    salt = os.urandom(16) if salt is None else salt
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_KEY_BYTES)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"{_SCHEME}${n}${r}${p}${b64(salt)}${b64(key)}"


def verify_password(password: str, password_hash: str) -> bool:
    """True when ``password`` matches ``password_hash``; False for a wrong or malformed hash."""
    try:
        scheme, n, r, p, salt_b64, key_b64 = password_hash.split("$")
        if scheme != _SCHEME:
            return False
        salt, key = base64.b64decode(salt_b64), base64.b64decode(key_b64)
        got = hashlib.scrypt(password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(key))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, key)


if __name__ == "__main__":  # pragma: no cover - tiny helper for operators
    if len(sys.argv) != 2:
        sys.exit("usage: python -m nowblock.ocpp.auth PASSWORD")
    print(hash_password(sys.argv[1]))
