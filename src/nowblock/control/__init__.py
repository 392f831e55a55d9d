"""Live control: the loop that runs inside ``nowblock serve``.

:class:`Controller` re-plans on events and on a period; :func:`attach` wires it, with the
store, into a central system. The control step itself (snapshot, needs, reservations, the
policy with its fallback, the safety net) is shared with the simulator (:mod:`nowblock.loop`).
"""

from nowblock.control.controller import REPLAN_EVENTS, Controller, StepResult
from nowblock.control.wiring import DEFAULT_DB, add_serve_arguments, attach
from nowblock.store import StoreRecorder, attach_store, restore_state  # noqa: F401 - old home of these names

__all__ = ["DEFAULT_DB", "REPLAN_EVENTS", "Controller", "StepResult", "add_serve_arguments", "attach"]
