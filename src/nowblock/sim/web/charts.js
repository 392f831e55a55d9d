/* nowblock charts: the uPlot charts shared by the operator page (served by `nowblock serve`)
 * and the simulation report (report.html, inlined). Needs uPlot (vendored beside this file).
 * Times are Unix seconds; a chart shows them in the site's time zone when one is given. */
(function (global) {
  "use strict";

  // IEC 60445 phase colours (L1 brown, L2 black, L3 grey): what electricians read at a glance.
  const PHASE_COLORS = ["#8b4513", "#202020", "#8a8a8a"];
  const LIMIT_COLOR = "#c62828";
  const PHASES = ["L1", "L2", "L3"];

  function widthOf(el) {
    return Math.max(260, Math.floor(el.clientWidth || el.parentNode.clientWidth || 600));
  }

  // Follow the container's width (phones turn, windows resize).
  function follow(u, el, height) {
    if (!global.ResizeObserver) return;
    let last = widthOf(el);
    new ResizeObserver(() => {
      const w = widthOf(el);
      if (Math.abs(w - last) > 2) { last = w; u.setSize({ width: w, height: height }); }
    }).observe(el);
  }

  // 24-hour times in the site's zone; the date under the first tick of each day.
  function timeFormat(tz) {
    const opt = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    const day = { day: "2-digit", month: "2-digit" };
    const full = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    if (tz) { opt.timeZone = tz; day.timeZone = tz; full.timeZone = tz; }
    const fHms = new Intl.DateTimeFormat("en-GB", Object.assign({ second: "2-digit" }, opt));
    const fHm = new Intl.DateTimeFormat("en-GB", opt), fDay = new Intl.DateTimeFormat("en-GB", day),
          fFull = new Intl.DateTimeFormat("en-GB", full);
    return {
      ticks: (u, splits) => {
        let prev = null;
        const fine = splits.some((ts) => ts != null && ts % 60 !== 0); // ticks within a minute
        return splits.map((ts) => {
          if (ts == null) return null;
          const d = new Date(ts * 1e3), dd = fDay.format(d);
          const s = (fine ? fHms : fHm).format(d) + (dd !== prev ? "\n" + dd : "");
          prev = dd;
          return s;
        });
      },
      full: (u, ts) => (ts == null ? "–" : fFull.format(new Date(ts * 1e3))),
    };
  }

  function zeroBased(u, min, max) {
    const hi = max == null || !isFinite(max) ? 1 : max;
    return [0, hi > 0 ? hi * 1.08 : 1];
  }

  // A vertical line at `nowTs` (the page: past measured, future planned).
  function nowMarker(getNow) {
    return {
      hooks: {
        draw: [(u) => {
          const t = getNow();
          if (t == null) return;
          const x = u.valToPos(t, "x", true);
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#1565c0";
          ctx.lineWidth = 1.5 * devicePixelRatio;
          ctx.setLineDash([3 * devicePixelRatio, 3 * devicePixelRatio]);
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.restore();
        }],
      },
    };
  }

  /**
   * A time chart. spec: {title, tz, yLabel, height, stepped, nowTs: () => seconds,
   *   series: [{label, color, dash, width, points, fill}]}; data: [times, ...values].
   */
  function timeChart(el, spec, data) {
    const height = spec.height || 260;
    const stepped = spec.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined;
    const tf = timeFormat(spec.tz);
    const series = [{ label: "time", value: tf.full }].concat(spec.series.map((s) => ({
      label: s.label,
      stroke: s.color,
      width: s.width || 1.5,
      dash: s.dash,
      fill: s.fill,
      spanGaps: false,
      paths: s.points ? () => null : stepped,
      points: s.points ? { show: true, size: 6, fill: s.color, stroke: s.color } : { show: false },
      value: (u, v) => (v == null ? "–" : v.toFixed(1)),
    })));
    const opts = {
      title: spec.title,
      width: widthOf(el),
      height: height,
      series: series,
      scales: { x: { time: true }, y: { range: zeroBased } },
      axes: [{ values: tf.ticks, space: 60 }, { label: spec.yLabel || "", size: 52 }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      plugins: spec.nowTs ? [nowMarker(spec.nowTs)] : [],
    };
    if (spec.tz) opts.tzDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), spec.tz);
    const u = new uPlot(opts, data, el);
    follow(u, el, height);
    return u;
  }

  /** The series of a fuse chart: per phase the load, optionally the plan, then the limits. */
  function fuseSeries(opts) {
    const out = [];
    PHASES.forEach((p, i) => out.push({ label: p + " " + (opts.loadLabel || "load"), color: PHASE_COLORS[i] }));
    if (opts.plan) {
      PHASES.forEach((p, i) => out.push({ label: p + " planned", color: PHASE_COLORS[i], dash: [6, 4] }));
    }
    (opts.limits || []).forEach((l) => out.push({ label: l.label, color: l.color || LIMIT_COLOR, dash: l.dash || [10, 5],
                                                  width: l.width || 1.5 }));
    if (opts.overload) out.push({ label: "overload", color: LIMIT_COLOR, points: true });
    return out;
  }

  /** Delivered against requested energy per car [kWh]: points on the diagonal got their need. */
  function energyChart(el, spec) {
    const height = spec.height || 260;
    const pairs = [];
    for (let i = 0; i < spec.requested.length; i++) {
      const r = spec.requested[i], d = spec.delivered[i];
      if (r != null && d != null && isFinite(r) && isFinite(d)) pairs.push([r, d]);
    }
    pairs.sort((a, b) => a[0] - b[0]);
    const x = pairs.map((p) => p[0]);
    const data = [x, pairs.map((p) => p[1]), x.slice()];
    const u = new uPlot({
      title: spec.title || "Energy per car: delivered against requested",
      width: widthOf(el),
      height: height,
      series: [
        { label: "requested [kWh]", value: (u, v) => (v == null ? "–" : v.toFixed(1)) },
        { label: "delivered [kWh]", stroke: "#2e7d32", paths: () => null,
          points: { show: true, size: 6, fill: "#2e7d32", stroke: "#2e7d32" },
          value: (u, v) => (v == null ? "–" : v.toFixed(2)) },
        { label: "need met (delivered = requested)", stroke: "#9e9e9e", dash: [4, 4], width: 1,
          points: { show: false }, value: (u, v) => (v == null ? "–" : v.toFixed(1)) },
      ],
      scales: { x: { time: false, range: zeroBased }, y: { range: zeroBased } },
      axes: [{ label: "requested [kWh]" }, { label: "delivered [kWh]", size: 52 }],
      legend: { live: true },
    }, data, el);
    follow(u, el, height);
    return u;
  }

  /** One value per category (a policy) as bars. spec: {title, labels, values, unit, color}. */
  function barChart(el, spec) {
    const height = spec.height || 220;
    const n = spec.labels.length;
    const x = spec.labels.map((_, i) => i);
    const u = new uPlot({
      title: spec.title,
      width: widthOf(el),
      height: height,
      series: [
        { label: "policy", value: (u, i) => (i == null ? "–" : spec.labels[i]) },
        { label: spec.unit, stroke: spec.color || "#1565c0", fill: (spec.color || "#1565c0") + "99",
          paths: uPlot.paths.bars({ size: [0.6, 80] }), points: { show: false },
          value: (u, v) => (v == null ? "–" : v.toFixed(spec.digits == null ? 2 : spec.digits)) },
      ],
      scales: { x: { time: false, range: () => [-0.5, n - 0.5] }, y: { range: zeroBased } },
      axes: [
        { splits: () => x, values: (u, splits) => splits.map((i) => spec.labels[i] || "") },
        { label: spec.unit, size: 52 },
      ],
      legend: { live: true },
    }, [x, spec.values], el);
    follow(u, el, height);
    return u;
  }

  global.NBCharts = { PHASES, PHASE_COLORS, LIMIT_COLOR, timeChart, fuseSeries, energyChart, barChart };
})(window);
