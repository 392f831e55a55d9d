"""The HTTP API of ``nowblock serve``: live state, binding limits, caps, section 14a dimming, metrics.

:class:`~nowblock.api.server.BlockApi` serves a running :class:`~nowblock.control.Controller`
over HTTP (FastAPI on uvicorn, on the central system's own event loop): JSON reads of the
public objects in :mod:`nowblock.control.status`, token-protected writes into
:class:`~nowblock.control.operator.OperatorInputs`, a Server-Sent-Events stream and
``/metrics`` for Prometheus. ``nowblock serve --http-port 8080`` wires it (docs/api.md).
The interfaces layer: it may import everything below it, nothing imports it but ``cli``.
"""

from nowblock.api.auth import TokenCheck, TokenConfigError, hash_token, token_hashes
from nowblock.api.server import BlockApi

__all__ = ["BlockApi", "TokenCheck", "TokenConfigError", "hash_token", "token_hashes"]
