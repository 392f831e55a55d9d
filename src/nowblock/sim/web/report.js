/* nowblock simulation report: draws the charts of report.html from its embedded JSON. */
(function () {
  "use strict";
  const C = window.NBCharts;
  const data = JSON.parse(document.getElementById("nowblock-data").textContent);
  const tz = data.timezone || undefined;

  function chart(id) {
    const el = document.getElementById(id);
    if (!el) throw new Error("report: no element " + id);
    return el;
  }

  if (data.results.length > 1) {
    const labels = data.results.map((r) => r.policy);
    C.barChart(chart("cmp-demand"), { title: "Demand met per policy [%]", labels: labels, unit: "demand met [%]",
      values: data.results.map((r) => 100 * r.metrics.demand_met), color: "#2e7d32", digits: 2 });
    C.barChart(chart("cmp-peak"), { title: "Peak block power per policy [kW]", labels: labels, unit: "peak [kW]",
      values: data.results.map((r) => r.metrics.peak_kw), color: "#1565c0", digits: 1 });
    C.barChart(chart("cmp-overload"), { title: "Worst fuse overload per policy [A]", labels: labels,
      unit: "max overload [A]", values: data.results.map((r) => r.metrics.max_overload_a), color: "#c62828", digits: 2 });
  }

  data.results.forEach((r, k) => {
    const t = r.times;
    C.timeChart(chart("power-" + k), {
      title: "Block power [kW]" + r.bucket_note, tz: tz, yLabel: "kW", stepped: true,
      series: [
        { label: "other load", color: "#78909c" },
        { label: "charging", color: "#e07a5f" },
        { label: "block", color: "#1565c0", width: 2 },
      ],
    }, [t, r.power.base_load_kw, r.power.charging_kw, r.power.block_kw]);
    r.fuses.forEach((f, j) => {
      C.timeChart(chart("fuse-" + k + "-" + j), {
        title: "Fuse " + f.id + (f.root ? " (grid connection, with the other load)" : "") +
               ": load per phase against its rating [A]" + r.bucket_note,
        tz: tz, yLabel: "A", stepped: true,
        series: C.fuseSeries({ limits: f.limits.map((l) => ({ label: l.label })), overload: true }),
      }, [t].concat(f.load_a, f.limits.map((l) => l.values), [f.overload_a]));
    });
    C.energyChart(chart("energy-" + k), {
      title: "Energy per car: delivered against requested [kWh] (" + r.sessions.requested.length + " sessions)",
      requested: r.sessions.requested, delivered: r.sessions.delivered,
    });
  });
  document.body.setAttribute("data-charts-drawn", String(document.querySelectorAll(".uplot").length));
})();
