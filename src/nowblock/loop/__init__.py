"""One control step, shared by the simulator and the live loop.

Both turn what the block reports into a :class:`~nowblock.seam.BlockSnapshot` the same way
(needs estimation, reservations for cars that cannot be trusted, allocation ceilings, the
pilot-step rule) and turn a policy's answer into setpoints the same way (the fallback on
failure, :func:`~nowblock.seam.make_safe`, hysteresis), so a simulated week measures what
live control would do. :mod:`~nowblock.loop.closed_loop` holds the pure functions.
"""
