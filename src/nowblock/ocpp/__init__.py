"""OCPP 1.6J and 2.0.1 central system: connections, handlers, live state, charging profiles.

Entry points: :class:`~nowblock.ocpp.server.CentralSystem` (``start()/stop()``, ``state``,
``events()``, ``set_limit``, ``set_default_profile``, ``set_station_max``,
``get_composite_schedule``, ``read_applied_limit``, ``clear_profiles``), :class:`~nowblock.ocpp.state.LiveState`
(``snapshot()`` for policies) and :func:`~nowblock.ocpp.auth.hash_password` for site files.
See docs/ocpp.md.
"""

__all__ = ["CentralSystem", "LiveState", "hash_password", "verify_password"]


def __getattr__(name: str):
    # auth too is imported only when asked for: imported here, ``python -m nowblock.ocpp.auth``
    # (the documented hash command) found it loaded before running it and runpy warned.
    if name in ("hash_password", "verify_password"):
        from nowblock.ocpp import auth

        return getattr(auth, name)
    # The server pulls in websockets and the ocpp library; import it only when asked for.
    if name == "CentralSystem":
        from nowblock.ocpp.server import CentralSystem

        return CentralSystem
    if name == "LiveState":
        from nowblock.ocpp.state import LiveState

        return LiveState
    raise AttributeError(f"module 'nowblock.ocpp' has no attribute {name!r}")
