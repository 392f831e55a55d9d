"""``/metrics`` in the Prometheus text format, written by ``prometheus_client``.

Counters and the step-time histogram are updated after every control step; everything else is
read from the block when Prometheus scrapes (a custom collector), so nothing is kept twice.
Each API has its own registry: several central systems in one process (tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

_STEP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BlockMetrics:
    """The API's metrics registry for one controller.

    Parameters
    ----------
    controller : Controller
    state : callable
        Returns the current :class:`~nowblock.control.status.BlockState` (cached by the API).
    hub : StreamHub, optional
        Its clients are counted.
    """

    def __init__(self, controller, state, hub=None) -> None:
        self.controller = controller
        self.state = state
        self.hub = hub
        self.registry = CollectorRegistry(auto_describe=True)
        self.step_seconds = Histogram("nowblock_step_seconds", "Duration of a control step [s]",
                                      buckets=_STEP_BUCKETS_S, registry=self.registry)
        self.steps = Counter("nowblock_steps", "Control steps by the policy that decided", ["policy"],
                             registry=self.registry)
        self.fallbacks = Counter("nowblock_fallbacks", "Control steps where the fallback policy answered "
                                 "(the policy failed or timed out)", registry=self.registry)
        self.registry.register(_LiveCollector(self))
        controller.step_listeners.append(self.on_step)

    def close(self) -> None:
        """Stop listening to the controller."""
        if self.on_step in self.controller.step_listeners:
            self.controller.step_listeners.remove(self.on_step)

    def on_step(self, res) -> None:
        """Count one :class:`~nowblock.control.controller.StepResult`."""
        self.step_seconds.observe(float(sum(res.seconds.values())))
        self.steps.labels(policy=res.policy).inc()
        if not str(res.status).startswith(("ok", "empty")):
            self.fallbacks.inc()


class _LiveCollector:
    """Gauges read from the block at scrape time."""

    def __init__(self, owner: BlockMetrics) -> None:
        self.owner = owner

    def describe(self):
        return []

    def collect(self):
        o = self.owner
        st = o.state()
        margin = GaugeMetricFamily("nowblock_fuse_margin_amperes", "Rating (or cap) minus measured current of a "
                                   "fuse phase [A]; negative is an overload", labels=["fuse", "phase"])
        planned = GaugeMetricFamily("nowblock_fuse_planned_margin_amperes", "Rating (or cap) minus planned current "
                                    "of a fuse phase [A]", labels=["fuse", "phase"])
        load = GaugeMetricFamily("nowblock_fuse_measured_amperes", "Measured current of a fuse phase [A]",
                                 labels=["fuse", "phase"])
        for f in st.fuses:
            for p in f.phases:
                margin.add_metric([f.id, p.phase], p.measured_margin_a)
                planned.add_metric([f.id, p.phase], p.planned_margin_a)
                load.add_metric([f.id, p.phase], p.measured_a)
        yield margin
        yield planned
        yield load
        yield GaugeMetricFamily("nowblock_charge_points", "Charging points in the site", value=len(st.charge_points))
        yield GaugeMetricFamily("nowblock_charge_points_connected", "Charging points connected now", value=st.connected)
        yield GaugeMetricFamily("nowblock_sessions_running", "Running charging sessions", value=len(st.cars))
        yield GaugeMetricFamily("nowblock_stale_meters", "Running sessions whose last meter value is older than "
                                "the staleness limit", value=st.stale_meters)
        yield GaugeMetricFamily("nowblock_untrusted_cars", "Cars not seen to follow their limit",
                                value=sum(not c.trusted for c in st.cars))
        yield GaugeMetricFamily("nowblock_alarms_active", "Overloads going on now", value=len(st.alarms_active))
        yield GaugeMetricFamily("nowblock_failsafe_missing", "Connected stations not known to hold their fail-safe",
                                value=sum(c.failsafe_missing for c in st.charge_points))
        yield GaugeMetricFamily("nowblock_dimming_power_kilowatts", "Charging power cap of the section 14a dimming "
                                "in force [kW] (0: none)",
                                value=next((d.power_kw for d in st.operator.dimmings if d.active), 0.0))
        yield GaugeMetricFamily("nowblock_caps_active", "Caps in force now", value=sum(c.active for c in st.operator.caps))
        if st.last_step is not None:
            yield GaugeMetricFamily("nowblock_last_step_timestamp_seconds", "Time of the last control step",
                                    value=st.last_step.time.timestamp())
        if o.hub is not None:
            yield GaugeMetricFamily("nowblock_stream_clients", "Clients of the live stream", value=len(o.hub.clients))
