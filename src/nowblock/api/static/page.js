/* nowblock operator page: reads the site and the state once, then follows the live stream
 * (GET api/stream); re-reads the state only after structural changes (a car plugged in or out, a
 * step, an operator input), at most every few seconds, so a block of 2,000 points stays cheap. */
(function () {
  "use strict";
  const C = window.NBCharts;
  const $ = (id) => document.getElementById(id);
  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ESC[c]);
  const fix = (v, d) => (v == null || !isFinite(v) ? "–" : Number(v).toFixed(d == null ? 1 : d));
  const TOKEN_KEY = "nowblock-api-token";
  const PLAN_HOURS = 4;
  const LIVE_MAX = 3000; // live load samples kept per chart
  const DAY_MS = 86400000;
  const STALE_AFTER_MS = 4000; // the stream down this long: what the page shows is old
  const SILENT_MS = 25000; // nothing from the stream this long (keep-alives come every 15 s): it is dead

  const S = {
    site: null, tz: undefined, state: null, token: sessionStorage.getItem(TOKEN_KEY),
    cpFuses: new Map(), rot: new Map(), fuseIndex: new Map(),
    meter: new Map(), status: new Map(), online: new Map(), step: new Map(),
    history: null, hours: 6, live: [], charts: new Map(), energy: null, energyKey: "",
    streamUp: false, refreshTimer: null, lastStateMs: 0, stateCostMs: 0, drawPending: false,
    lastHeardMs: 0, lastUpdateMs: 0, downSinceMs: Date.now(), stale: false, abort: null, fmts: new Map(),
  };

  // ---- HTTP ------------------------------------------------------------------------------------
  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (S.token) h.Authorization = "Bearer " + S.token;
    return h;
  }

  async function get(path) {
    const r = await fetch(path, { headers: headers(), cache: "no-store" });
    if (r.status === 401) { askToken("Reading this block needs a token."); return null; }
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  // A write; refused for its token (401), `retry` runs again once a token is entered.
  async function send(method, path, body, retry) {
    const r = await fetch(path, { method: method, headers: headers({ "Content-Type": "application/json" }),
                                  body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try { data = r.status === 204 ? null : await r.json(); } catch (e) { data = null; }
    if (r.status === 401) {
      forgetToken();
      S.pending = retry || null;
      askToken(((data && data.detail) || "A token is needed to change anything.") +
               (retry ? ". Enter the right token: the change is then sent again." : ""));
      $("token").focus();
    }
    return { ok: r.ok, status: r.status, data: data };
  }

  function errorText(res) {
    if (res.status === 401) return "the token was refused; enter the right one above and this is sent again";
    const d = res.data && res.data.detail;
    if (Array.isArray(d)) return d.map((x) => (x.loc || []).slice(1).join(".") + ": " + x.msg).join("; ");
    return d ? String(d) : "HTTP " + res.status;
  }

  // ---- token: asked once, kept for this browser session ---------------------------------------
  function askToken(why) {
    $("access").classList.remove("hidden");
    $("access-why").textContent = why;
  }

  function forgetToken() {
    S.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("forget-token").classList.add("hidden");
  }

  // true with a token; else ask for one and run `then` once it is entered
  function hasToken(then) {
    if (S.token) return true;
    S.pending = then || null;
    askToken("Enter the API token to post; it is kept in this browser tab only.");
    $("token").focus();
    return false;
  }

  // ---- the site: fuse cards and their charts -----------------------------------------------------
  function setSite(site) {
    S.site = site;
    S.tz = site.timezone || undefined;
    document.title = "nowblock: " + site.name;
    $("title").textContent = site.name;
    site.fuses.forEach((f, i) => {
      S.fuseIndex.set(f.id, i);
      f.charge_point_ids.forEach((cp) => {
        if (!S.cpFuses.has(cp)) S.cpFuses.set(cp, []);
        S.cpFuses.get(cp).push(i);
      });
    });
    site.charge_points.forEach((cp) => {
      S.rot.set(cp.id, (cp.phase_rotation.match(/L[123]/g) || ["L1", "L2", "L3"]).map((p) => Number(p[1]) - 1));
    });
    $("fuses").innerHTML = site.fuses.map((f, i) =>
      `<div class="card fuse" id="fuse-${i}" data-fuse="${esc(f.id)}"><h3>${esc(f.id)}` +
      `${f.id === site.grid_connection ? " <span class='muted'>(grid connection)</span>" : ""} ` +
      `<span class="muted">${esc(f.max_current_a.map((a) => fix(a, 0)).join("/"))} A, ` +
      `${f.charge_point_ids.length} points</span></h3><div class="phases"></div>` +
      `<div class="chart" id="fuse-chart-${i}"></div></div>`).join("");
    $("cap-fuse").innerHTML = site.fuses.map((f) =>
      `<option value="${esc(f.id)}">${esc(f.id)}${f.id === site.grid_connection ? " (whole block)" : ""}</option>`).join("");
  }

  // Per fuse (index) and grid phase: the sum of per-charger-phase currents of the given cars.
  function fuseCurrents(items) {
    const out = S.site.fuses.map(() => [0, 0, 0]);
    for (const it of items) {
      const fuses = S.cpFuses.get(it.cp), rot = S.rot.get(it.cp);
      if (!fuses || !rot) continue;
      for (let k = 0; k < 3; k++) {
        const a = it.current[k];
        if (a == null || !isFinite(a)) continue;
        for (const f of fuses) out[f][rot[k]] += a;
      }
    }
    return out;
  }

  // The live charging current now (the last meter value of every running session).
  function measuredNow() {
    const items = [];
    for (const car of S.state.cars) {
      const m = S.meter.get(car.session_id);
      const con = connectorOf(car.charge_point_id, car.connector_id);
      const cur = m ? m.current_a : (con ? con.measured_current_a : null);
      if (cur) items.push({ cp: car.charge_point_id, current: cur });
    }
    return fuseCurrents(items);
  }

  function sampleLive() {
    if (!S.state) return;
    S.live.push({ t: Date.now() / 1000, load: measuredNow() });
    const since = Date.now() / 1000 - S.hours * 3600;
    while (S.live.length && (S.live.length > LIVE_MAX || S.live[0].t < since)) S.live.shift();
  }

  // The plan ahead per fuse phase: every car's plan on the phases it loads.
  function planned() {
    const cars = S.state.cars.filter((c) => c.plan_start && c.plan_current_a.length);
    if (!cars.length) return { times: [], load: [], dt: 0 };
    const t0 = Date.parse(cars[0].plan_start) / 1000;
    // a policy without a plan ahead (one slot): its setpoints hold from the step until now
    const dt = cars[0].plan_step_s || Math.max(1, Date.now() / 1000 - t0);
    const n = Math.max.apply(null, cars.map((c) => c.plan_current_a.length));
    const times = [], load = [];
    for (let s = 0; s < n; s++) {
      times.push(t0 + s * dt);
      load.push(fuseCurrents(cars.map((c) => {
        const a = c.plan_current_a[s] || 0;
        return { cp: c.charge_point_id, current: [0, 1, 2].map((k) => (k < c.phases ? a : 0)) };
      })));
    }
    // the last slot is drawn to its end
    times.push(t0 + n * dt);
    load.push(load[load.length - 1]);
    return { times: times, load: load, dt: dt };
  }

  function drawFuses() {
    const st = S.state, site = S.site;
    const plan = planned();
    const v = site.voltage_v;
    const baseA = (st.base_load_kw * 1000) / (3 * v);
    const measured = measuredNow();
    site.fuses.forEach((f, i) => {
      const fl = st.fuses[i];
      const root = f.id === site.grid_connection;
      // numbers now (measured and planned include the other load on the grid connection)
      const over = fl.phases.some((p) => p.measured_a > p.limit_a + 1e-6);
      const card = $("fuse-" + i);
      card.classList.toggle("over", over);
      const phasesHtml = fl.phases.map((p, k) => {
        const m = measured[i][k] + (root ? baseA : 0);
        const bad = m > p.limit_a + 1e-6;
        const pct = Math.max(0, Math.min(100, (100 * m) / (p.limit_a || 1)));
        return `<div class="phase${bad ? " over" : ""}" data-phase="${p.phase}"><span class="muted">${p.phase}</span> ` +
          `<b class="measured">${fix(m)}</b> / ${fix(p.limit_a, 0)} A` +
          `${p.cap_a != null ? " <span class='pill warn'>cap</span>" : ""}<div class="meter"><i style="width:${pct}%"></i></div>` +
          `<span class="muted">planned ${fix(p.planned_a)} A</span></div>`;
      }).join("");
      const box = card.querySelector(".phases");
      if (box._html !== phasesHtml) { box.innerHTML = phasesHtml; box._html = phasesHtml; }
      // chart: charging current (the store has no other load), limits as lines
      const lim = fl.phases.map((p) => p.limit_a);
      const same = lim.every((x) => Math.abs(x - lim[0]) < 1e-9);
      const capped = fl.phases.some((p) => p.cap_a != null);
      const limitSeries = same ? [{ label: capped ? "limit (capped)" : "limit", value: lim[0] }]
        : fl.phases.map((p) => ({ label: p.phase + " limit", value: p.limit_a }));
      if (root && baseA > 0) {
        const orange = { color: "#ef6c00", dash: [2, 3] };
        if (same) limitSeries.push(Object.assign({ label: "limit − other load now", value: lim[0] - baseA }, orange));
        else fl.phases.forEach((p) => limitSeries.push(Object.assign({ label: p.phase + " limit − other load",
                                                                       value: p.limit_a - baseA }, orange)));
      }
      const rows = new Map();
      const put = (t, col, val) => {
        let r = rows.get(t);
        if (!r) { r = new Array(7); rows.set(t, r); }
        r[col] = val;
      };
      if (S.history) {
        const h = S.history;
        h.times.forEach((t, j) => {
          for (let k = 0; k < 3; k++) { const s = h.series[i][k]; if (s[j] != null) put(t, k, s[j]); }
        });
      }
      for (const s of S.live) for (let k = 0; k < 3; k++) put(s.t, k, s.load[i][k]);
      plan.times.forEach((t, j) => { for (let k = 0; k < 3; k++) put(t, 3 + k, plan.load[j][i][k]); });
      put(Math.round(Date.now() / 1000), 6, null); // the axis reaches now (the blue line)
      const times = Array.from(rows.keys()).sort((a, b) => a - b);
      const data = [times];
      // A value holds until the series' next one (stepped), for at most `hold` [s]: longer is a gap.
      const holdMeasured = Math.max(60, S.history ? S.history.bucket_s : 0), holdPlan = plan.dt || 0;
      for (let c = 0; c < 6; c++) {
        const hold = c < 3 ? holdMeasured : holdPlan;
        let last = null, lastT = -Infinity;
        data.push(times.map((t) => {
          const x = rows.get(t)[c];
          if (x != null) { last = x; lastT = t; return x; }
          return t - lastT < hold ? last : null;
        }));
      }
      for (const l of limitSeries) data.push(times.map(() => l.value));
      const key = limitSeries.map((l) => l.label).join("|");
      let ch = S.charts.get(i);
      if (ch && ch.key !== key) { ch.u.destroy(); ch = null; }
      if (!ch) {
        const u = C.timeChart($("fuse-chart-" + i), {
          title: "charging current per phase [A]", tz: S.tz, yLabel: "A", stepped: true, height: 230,
          nowTs: () => Date.now() / 1000,
          series: C.fuseSeries({ loadLabel: "measured", plan: true, limits: limitSeries }),
        }, data);
        S.charts.set(i, { u: u, key: key });
      } else {
        ch.u.setData(data);
      }
    });
  }

  // ---- the table -------------------------------------------------------------------------------
  function connectorOf(cpId, connectorId) {
    const cp = S.state.charge_points.find((c) => c.id === cpId);
    return cp ? cp.connectors.find((c) => c.connector_id === connectorId) : null;
  }

  // ---- times: all in the site's zone (the browser's only if the site names none), labelled --------
  function fmt(key, opt) {
    let f = S.fmts.get(key);
    if (!f) {
      f = new Intl.DateTimeFormat("en-GB", Object.assign({ hourCycle: "h23" }, S.tz ? { timeZone: S.tz } : {}, opt));
      S.fmts.set(key, f);
    }
    return f;
  }

  // Wall-clock parts (year, month, day, hour, minute, second: strings) of instant `ms` in the site's zone.
  function wallParts(ms) {
    const p = {};
    for (const x of fmt("parts", { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
                                   minute: "2-digit", second: "2-digit" }).formatToParts(new Date(ms))) p[x.type] = x.value;
    return p;
  }

  // The zone's abbreviation or offset at instant `ms` ("CET", "CEST", "GMT-5").
  function zoneName(ms) {
    const z = fmt("zone", { timeZoneName: "short", hour: "2-digit" }).formatToParts(new Date(ms)).find((x) => x.type === "timeZoneName");
    return z ? z.value : "";
  }

  // The site's offset from UTC at instant `ms` [ms].
  function offsetMs(ms) {
    const p = wallParts(ms);
    return Date.UTC(Number(p.year), Number(p.month) - 1, Number(p.day), Number(p.hour) % 24, Number(p.minute), Number(p.second))
      - Math.floor(ms / 1000) * 1000;
  }

  // "YYYY-MM-DDTHH:MM" (a datetime-local input) read as the site's wall clock -> instant [ms], NaN if not one.
  function wallToMs(text) {
    const m = /^(\d{4,6})-(\d{2})-(\d{2})T(\d{2}):(\d{2})/.exec(text || "");
    if (!m) return NaN;
    const guess = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]));
    if (!isFinite(guess)) return NaN;
    const first = guess - offsetMs(guess);
    return guess - offsetMs(first); // right on both sides of a change of offset
  }

  // Instant `ms` as the site's wall clock for a datetime-local input.
  function msToWall(ms) {
    const p = wallParts(ms);
    return `${p.year}-${p.month}-${p.day}T${p.hour}:${p.minute}`;
  }

  // A time in the site's zone: weekday and clock within 24 h of now, with the date (and the year
  // when not this one) beyond; the zone is named when asked (`zone`) or when it is not now's (DST).
  function fmtTime(iso, zone) {
    if (!iso) return "–";
    const ms = typeof iso === "number" ? iso : Date.parse(iso);
    if (!isFinite(ms)) return "–";
    const now = Date.now();
    let s;
    if (Math.abs(ms - now) < DAY_MS) s = fmt("near", { weekday: "short", hour: "2-digit", minute: "2-digit" }).format(new Date(ms));
    else if (wallParts(ms).year === wallParts(now).year)
      s = fmt("far", { weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" }).format(new Date(ms));
    else s = fmt("year", { day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit" }).format(new Date(ms));
    const z = zoneName(ms);
    return zone || z !== zoneName(now) ? s + " " + z : s;
  }

  function fmtClock(ms) {
    return fmt("clock", { hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(new Date(ms)) + " " + zoneName(ms);
  }

  // A point of the site that never connected since the central system started.
  function neverSeen(id) {
    return { id: id, connected: false, version: null, last_seen: null, failsafe_missing: false,
             in_service: !S.state.operator.out_of_service.includes(id),
             connectors: [{ connector_id: 1, status: "never connected", session_id: null, profile: null,
                            accepted_limit_a: null, measured_current_a: [null, null, null], energy_kwh: null }] };
  }

  function rowsOf() {
    const st = S.state;
    const cars = new Map(st.cars.map((c) => [c.session_id, c]));
    const out = [];
    const known = new Map(st.charge_points.map((c) => [c.id, c]));
    for (const info of S.site.charge_points) {
      const cp = known.get(info.id) || neverSeen(info.id);
      const online = S.online.has(cp.id) ? S.online.get(cp.id) : cp.connected;
      for (const con of cp.connectors) {
        const key = cp.id + "/" + con.connector_id;
        const car = con.session_id ? cars.get(con.session_id) : null;
        const m = con.session_id ? S.meter.get(con.session_id) : null;
        const stp = con.session_id ? S.step.get(con.session_id) : null;
        const status = S.status.get(key) || con.status;
        const cur = m ? m.current_a : con.measured_current_a;
        const curMax = cur && cur.some((x) => x != null) ? Math.max.apply(null, cur.filter((x) => x != null)) : null;
        const energy = m && m.energy_kwh != null ? m.energy_kwh : (car ? car.energy_delivered_kwh : con.energy_kwh);
        // the limit sent, from the state (a step's stream message carries what is counted for a car
        // that does not follow, not the limit it was sent); the binding limit from the last step
        const setpoint = car ? car.setpoint_a : null;
        const b = stp && stp.binding ? { kind: stp.binding, limit: stp.limit, room_a: stp.room_a } : (car ? car.binding : null);
        const flags = [];
        if (!online) flags.push(["bad", "offline"]);
        if (!cp.in_service) flags.push(["warn", "out of service"]);
        const stale = car && car.untrusted_reason === "stale"; // the controller's word (its stale_after_s)
        if (stale) flags.push(["warn", "stale meter"]);
        // (offline is the connection's word above, not repeated from the car's)
        if (car && !car.trusted && car.untrusted_reason && car.untrusted_reason !== "stale" && car.untrusted_reason !== "offline")
          flags.push(["bad", car.untrusted_reason.replace("_", " ")]);
        if (con.profile && (con.profile.kind === "failsafe" || con.profile.kind === "fallback_default"))
          flags.push(["warn", con.profile.kind === "failsafe" ? "fail-safe" : "fallback limit"]);
        if (cp.failsafe_missing) flags.push(["warn", "no fail-safe"]);
        const soc = m && m.soc_percent != null ? m.soc_percent : con.soc_percent;
        if (con.session_id && soc != null) flags.push(["", "SoC " + fix(soc, 0) + " %"]);
        const cls = [!online ? "offline" : "", stale ? "stale" : "",
                     con.profile && con.profile.kind === "failsafe" ? "failsafe" : "",
                     flags.some((f) => f[0] === "bad" || f[0] === "warn") ? "problem" : ""].filter(Boolean).join(" ");
        const need = car && car.energy_requested_kwh != null ? " / " + fix(car.energy_requested_kwh) : "";
        const accepted = con.accepted_limit_a;
        const cells = [
          ["point", `<b>${esc(cp.id)}</b>${cp.connectors.length > 1 ? "/" + con.connector_id : ""}` +
                    ` <span class="muted">${esc(cp.version || "")}</span>`],
          ["status", esc(online ? status : (cp.last_seen ? "offline" : "never connected"))],
          ["car", car ? `${esc(car.session_id)} <span class="muted">${car.phases}-ph, ${esc(car.needs_source)}</span>` : "–"],
          ["current [A]", `<span class="current" title="${esc((cur || []).map((x) => fix(x)).join(" / "))}">${fix(curMax)}</span>`, "num"],
          ["limit [A]", `${fix(setpoint)}${accepted != null && setpoint != null && Math.abs(accepted - setpoint) > 0.05
            ? ` <span class="muted">(in force ${fix(accepted)})</span>` : ""}`, "num"],
          ["energy [kWh]", `${fix(energy, 2)}${need}`, "num"],
          ["departure", car ? esc(fmtTime(car.departure)) : "–"],
          ["binding limit", b ? `${esc(b.kind)}${b.limit && b.limit !== b.kind ? " " + esc(b.limit) : ""}` +
                            ` <span class="muted nowrap">+${fix(b.room_a)} A</span>` : "–"],
          ["flags", flags.map((f) => `<span class="pill ${f[0]}">${esc(f[1])}</span>`).join("")],
        ];
        out.push({ key: key, cls: cls, problem: cls.includes("problem"),
                   text: (cp.id + " " + (con.session_id || "") + " " + status + " " + flags.map((f) => f[1]).join(" ")).toLowerCase(),
                   html: cells.map((c) => `<td data-label="${esc(c[0])}"${c[2] ? ` class="${c[2]}"` : ""}><span class="v">${c[1]}</span></td>`).join("") });
      }
    }
    return out;
  }

  function drawTable() {
    const body = $("points").tBodies[0];
    const filter = $("filter").value.trim().toLowerCase();
    const onlyProblems = $("problems").checked;
    const rows = rowsOf();
    const have = new Map(Array.from(body.rows).map((tr) => [tr.dataset.key, tr]));
    let shown = 0, problems = 0, prev = null;
    for (const r of rows) {
      let tr = have.get(r.key);
      have.delete(r.key);
      if (!tr) { tr = document.createElement("tr"); tr.dataset.key = r.key; }
      if (tr._html !== r.html) { tr.innerHTML = r.html; tr._html = r.html; }
      if (tr.className !== r.cls) tr.className = r.cls;
      const visible = (!filter || r.text.includes(filter)) && (!onlyProblems || r.problem);
      tr.hidden = !visible;
      shown += visible;
      problems += r.problem;
      const want = prev ? prev.nextSibling : body.firstChild;
      if (want !== tr) body.insertBefore(tr, want);
      prev = tr;
    }
    for (const tr of have.values()) tr.remove();
    $("counts").textContent = `${shown} of ${rows.length} shown, ${problems} with problems`;
  }

  function drawEnergy() {
    const cars = S.state.cars.filter((c) => c.energy_requested_kwh != null);
    const req = cars.map((c) => c.energy_requested_kwh);
    const del = cars.map((c) => { const m = S.meter.get(c.session_id); return m && m.energy_kwh != null ? m.energy_kwh : c.energy_delivered_kwh; });
    const key = cars.map((c) => c.session_id).join(",");
    if (S.energy && S.energyKey === key) {
      const pairs = req.map((r, i) => [r, del[i]]).sort((a, b) => a[0] - b[0]);
      S.energy.setData([pairs.map((p) => p[0]), pairs.map((p) => p[1]), pairs.map((p) => p[0])]);
      return;
    }
    if (S.energy) S.energy.destroy();
    $("energy-chart").innerHTML = "";
    S.energyKey = key;
    S.energy = C.energyChart($("energy-chart"), {
      title: `Energy per car: delivered so far against requested [kWh] (${cars.length} cars)`, requested: req, delivered: del,
      height: 220 });
  }

  // ---- header, alarms, operator inputs ------------------------------------------------------------
  function drawHeader() {
    const st = S.state;
    const n = S.site.charge_points.length;
    const online = st.charge_points.filter((c) => (S.online.has(c.id) ? S.online.get(c.id) : c.connected)).length;
    const live = $("live");
    live.textContent = S.streamUp ? "live" : "reconnecting";
    live.className = "pill " + (S.streamUp ? "ok" : "warn");
    $("clock").textContent = "state of " + fmtTime(st.time, true);
    const zone = zoneName(Date.now());
    $("th-departure").textContent = `departure (${zone})`;
    $("needs-zone").textContent = `(site time, ${S.tz || "this browser's zone"}, ${zone})`;
    const c = $("connected");
    c.textContent = `${online} of ${n} points online`;
    c.className = "pill " + (online < n ? "bad" : "ok");
    // the cars flagged "stale meter" in the table: the controller's word at its last step
    // (state.stale_meters counts by another rule, offline chargers' sessions too)
    const nStale = st.cars.filter((c) => c.untrusted_reason === "stale").length;
    const stale = $("stale");
    stale.textContent = `${nStale} stale meter${nStale === 1 ? "" : "s"}`;
    stale.className = "pill warn" + (nStale ? "" : " hidden");
    const ls = S.lastStep || st.last_step;
    $("laststep").textContent = ls ? `last step ${fmtTime(ls.time)}: ${ls.policy}, ${ls.status}${ls.fallback ? " (fallback)" : ""}, ` +
      `${ls.cars} cars, ${fix(ls.total_current_a)} A, ${fix(ls.step_s * 1000, 0)} ms` : "no step yet";
    $("baseload").textContent = `other load ${fix(st.base_load_kw)} kW`;
    const alarms = st.alarms_active.map((a) =>
      `overload: fuse ${esc(a.fuse_id)} ${esc(a.phase)} up to ${fix(a.worst_a)} A over its ${fix(a.limit_a, 0)} A since ${esc(fmtTime(a.start))}`);
    const over = [];
    st.fuses.forEach((f) => f.phases.forEach((p) => {
      if (p.measured_margin_a < -1e-6) over.push(`${f.id} ${p.phase} ${fix(-p.measured_margin_a)} A over its limit`);
    }));
    if (!alarms.length && over.length) alarms.push("measured above the limit: " + esc(over.join(", ")));
    $("alarms").innerHTML = alarms.join("<br>");
  }

  function drawOperator() {
    const op = S.state.operator;
    const items = [];
    op.caps.forEach((c) => items.push(`<li data-cap="${esc(c.cap_id)}"><span class="pill ${c.active ? "warn" : ""}">cap</span>` +
      `${esc(c.fuse_id)} at ${esc(c.max_current_a.map((a) => fix(a)).join("/"))} A until ${esc(fmtTime(c.end))}` +
      `${c.reason ? " (" + esc(c.reason) + ")" : ""} <button type="button" class="secondary" data-end-cap="${esc(c.cap_id)}">end now</button></li>`));
    op.dimmings.forEach((d) => items.push(`<li><span class="pill ${d.active ? "warn" : ""}">§14a</span>` +
      `charging power ${fix(d.power_kw)} kW until ${esc(fmtTime(d.end))} <button type="button" class="secondary" ` +
      `data-end-dimming="${esc(d.dimming_id)}">end now</button></li>`));
    op.needs.forEach((x) => items.push(`<li><span class="pill">needs</span>${esc(x.session_id)}: ${fix(x.energy_kwh)} kWh by ` +
      `${esc(fmtTime(x.departure))}</li>`));
    op.out_of_service.forEach((cp) => items.push(`<li><span class="pill warn">out of service</span>${esc(cp)}</li>`));
    const html = items.join("") || "<li class='muted'>no caps, dimmings, needs or points out of service</li>";
    const list = $("operator-list");
    if (list._html !== html) { list.innerHTML = html; list._html = html; }
    const sel = $("needs-car");
    const opts = S.state.cars.map((c) => `<option value="${esc(c.session_id)}">${esc(c.session_id)} at ${esc(c.charge_point_id)}</option>`).join("");
    if (sel._html !== opts) {
      const keep = sel.value;
      sel.innerHTML = opts;
      sel._html = opts;
      if (keep) sel.value = keep;
      if (sel.value !== keep) sel.dispatchEvent(new Event("change"));
    }
  }

  function draw() {
    if (S.drawPending) return;
    S.drawPending = true;
    requestAnimationFrame(() => {
      S.drawPending = false;
      if (!S.state) return;
      drawHeader();
      drawFuses();
      drawTable();
      drawEnergy();
      drawOperator();
    });
  }

  // ---- reading the state and the history -----------------------------------------------------------
  async function loadState() {
    const t0 = performance.now();
    const st = await get(`api/state?plan_hours=${PLAN_HOURS}`);
    if (!st) return;
    S.stateCostMs = performance.now() - t0;
    S.lastStateMs = S.lastUpdateMs = Date.now();
    S.state = st;
    const at = Date.parse(st.time);
    // live values older than this state are in it
    for (const [k, m] of S.meter) if (Date.parse(m.time) <= at) S.meter.delete(k);
    S.status.clear();
    S.online.clear();
    S.step.clear();
    S.lastStep = null;
    draw();
  }

  // Re-read the state soon (debounced; never more often than every 2 s, nor than 20x its cost).
  function refreshSoon() {
    if (S.refreshTimer) return;
    const gap = Math.max(2000, 20 * S.stateCostMs);
    const wait = Math.max(250, S.lastStateMs + gap - Date.now());
    S.refreshTimer = setTimeout(() => { S.refreshTimer = null; loadState().catch(report); }, wait);
  }

  async function loadHistory() {
    const bucket = Math.max(10, Math.round((S.hours * 3600) / 360));
    const r = await fetch(`api/history?hours=${S.hours}&bucket_s=${bucket}`, { headers: headers(), cache: "no-store" });
    if (r.status === 503 || r.status === 401) { S.history = null; return; } // no store: live values only
    if (!r.ok) throw new Error("api/history: HTTP " + r.status);
    const h = await r.json();
    const series = S.site.fuses.map(() => [[], [], []]);
    for (const f of h.fuses) {
      const i = S.fuseIndex.get(f.fuse_id);
      if (i != null) series[i][C.PHASES.indexOf(f.phase)] = f.current_a;
    }
    S.history = { times: h.times.map((t) => Date.parse(t) / 1000), series: series, bucket_s: h.bucket_s };
    draw();
  }

  // ---- the live stream (fetch, so that a token can go in a header) -------------------------------
  function handle(event, data) {
    if (event === "hello") { loadState().then(loadHistory).catch(report); return; }
    if (!S.state) return;
    S.lastUpdateMs = Date.now();
    if (event === "meter") {
      for (const it of data.items) S.meter.set(it.session_id, it);
      sampleLive();
    } else if (event === "ocpp") {
      const key = data.charge_point_id + "/" + data.connector_id;
      if (data.kind === "status") S.status.set(key, data.data.status);
      else if (data.kind === "connect") S.online.set(data.charge_point_id, true);
      else if (data.kind === "disconnect") S.online.set(data.charge_point_id, false);
      if (["plug_in", "unplug", "start", "stop", "needs", "connect", "disconnect"].includes(data.kind)) refreshSoon();
    } else if (event === "step") {
      S.lastStep = data.step;
      for (const c of data.cars) S.step.set(c.session_id, c);
      refreshSoon(); // the plan ahead and the fuse numbers
    } else if (event === "operator" || event === "dropped") {
      refreshSoon();
    }
    draw();
  }

  function parse(block) {
    let event = "message";
    const lines = [];
    for (const line of block.split("\n")) {
      if (!line || line[0] === ":") continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") lines.push(value);
    }
    if (!lines.length) return;
    let data = null;
    try { data = JSON.parse(lines.join("\n")); } catch (e) { return; }
    handle(event, data);
  }

  async function follow() {
    let wait = 500;
    for (;;) {
      try {
        S.abort = new AbortController();
        const r = await fetch("api/stream", { headers: headers({ Accept: "text/event-stream" }), cache: "no-store",
                                              signal: S.abort.signal });
        if (r.status === 401) { askToken("Reading this block needs a token."); return; }
        if (!r.ok || !r.body) throw new Error("api/stream: HTTP " + r.status);
        S.streamUp = true;
        S.lastHeardMs = Date.now();
        wait = 500;
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const chunk = await reader.read();
          if (chunk.done) break;
          S.lastHeardMs = Date.now();
          buf += chunk.value;
          // normalise line ends, keeping a trailing CR that may pair with the next chunk's LF
          const cut = buf.endsWith("\r") ? buf.length - 1 : buf.length;
          buf = buf.slice(0, cut).replace(/\r\n?/g, "\n") + buf.slice(cut);
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) { parse(buf.slice(0, i)); buf = buf.slice(i + 2); }
        }
      } catch (e) {
        // the server restarts or the network drops: try again, then read the state anew (on hello)
      }
      if (S.streamUp) S.downSinceMs = Date.now();
      S.streamUp = false;
      if (S.state) { drawHeader(); checkStale(); }
      await new Promise((res) => setTimeout(res, wait));
      wait = Math.min(wait * 2, 10000);
    }
  }

  // Old data shown as old: once the stream is down for a few seconds (or silent past its
  // keep-alives), the tables and charts are greyed and a banner says when the last update came.
  function checkStale() {
    const now = Date.now();
    if (S.streamUp && S.lastHeardMs && now - S.lastHeardMs > SILENT_MS && S.abort) S.abort.abort(); // reconnect
    const stale = !!S.state && ((!S.streamUp && now - S.downSinceMs > STALE_AFTER_MS) ||
                                (S.streamUp && now - S.lastHeardMs > SILENT_MS));
    if (stale !== S.stale) { S.stale = stale; document.body.classList.toggle("stale", stale); }
    const el = $("stale-banner");
    if (!stale) { if (el.textContent) el.textContent = ""; return; }
    const ago = Math.max(0, Math.round((now - S.lastUpdateMs) / 1000));
    el.textContent = `Not live: no answer from the server, reconnecting. What is shown is the last update, at ` +
      `${fmtClock(S.lastUpdateMs)}, ${ago} s ago.`;
  }

  function report(e) {
    console.warn("nowblock page:", e && e.message ? e.message : e);
  }

  // ---- forms ---------------------------------------------------------------------------------------
  function say(id, text, ok) {
    const el = $(id);
    el.textContent = text;
    el.className = "msg " + (ok ? "ok" : "bad");
  }

  function wire() {
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      if (!t) return;
      S.token = t;
      sessionStorage.setItem(TOKEN_KEY, t);
      $("token").value = "";
      $("access").classList.add("hidden");
      $("forget-token").classList.remove("hidden");
      if (!S.site) start();
      const then = S.pending;
      S.pending = null;
      if (then) then();
    });
    $("forget-token").addEventListener("click", forgetToken);
    // a car chosen: its needs as the last step planned with, to edit
    $("needs-car").addEventListener("change", () => {
      const car = S.state && S.state.cars.find((c) => c.session_id === $("needs-car").value);
      if (!car) return;
      if (car.departure) $("needs-departure").value = msToWall(Date.parse(car.departure)); // the site's wall clock
      if (car.energy_requested_kwh != null) $("needs-energy").value = fix(car.energy_requested_kwh);
    });
    if (S.token) $("forget-token").classList.remove("hidden");
    const postCap = async () => {
      const fuse = $("cap-fuse").value;
      const info = S.site.fuses.find((f) => f.id === fuse);
      const max = info ? Math.max.apply(null, info.max_current_a) : 0;
      // decimal amperes in steps of 0.1 A from 0 to the fuse's rating (a cap above it changes nothing)
      const text = $("cap-current").value.split(/[,;/\s]+/).filter(Boolean);
      const parts = text.map(Number);
      if (!(parts.length === 1 || parts.length === 3) || !text.every((x) => /^\d{1,6}(\.\d0*)?$/.test(x)) ||
          parts.some((x) => x > max)) {
        say("cap-msg", `max current: one value or three (L1,L2,L3), each 0 to ${fix(max, 0)} A (the fuse's rating) ` +
            "in steps of 0.1 A, e.g. 16 or 16.5", false);
        return;
      }
      if (!hasToken(postCap)) return;
      const body = { fuse_id: fuse === S.site.grid_connection ? null : fuse, max_current_a: parts.length === 1 ? parts[0] : parts,
                     duration_s: 60 * Number($("cap-minutes").value), source: "operator page", reason: $("cap-reason").value };
      const res = await send("POST", "api/caps", body, postCap);
      if (res.ok) { say("cap-msg", `cap ${res.data.cap_id} on ${res.data.fuse_id} until ${fmtTime(res.data.end, true)}`, true); refreshSoon(); }
      else say("cap-msg", "refused: " + errorText(res), false);
    };
    $("cap-form").addEventListener("submit", (ev) => { ev.preventDefault(); postCap().catch(report); });
    const postNeeds = async () => {
      const sid = $("needs-car").value;
      if (!sid) { say("needs-msg", "no car is plugged in", false); return; }
      const dep = wallToMs($("needs-departure").value); // the site's wall clock, as the page shows times
      if (!isFinite(dep) || !isFinite(new Date(dep).getTime())) { say("needs-msg", "departure: a date and time", false); return; }
      if (!hasToken(postNeeds)) return;
      const body = { departure: new Date(dep).toISOString(), energy_kwh: Number($("needs-energy").value) };
      const res = await send("PUT", `api/cars/${encodeURIComponent(sid)}/needs`, body, postNeeds);
      if (res.ok) { say("needs-msg", `needs of ${sid}: ${fix(res.data.energy_kwh)} kWh by ${fmtTime(res.data.departure, true)}`, true); refreshSoon(); }
      else say("needs-msg", "refused: " + errorText(res), false);
    };
    $("needs-form").addEventListener("submit", (ev) => { ev.preventDefault(); postNeeds().catch(report); });
    $("operator-list").addEventListener("click", (ev) => {
      const cap = ev.target.dataset.endCap, dim = ev.target.dataset.endDimming;
      if (!cap && !dim) return;
      const end = async () => {
        if (!hasToken(end)) return;
        const res = await send("DELETE", cap ? `api/caps/${encodeURIComponent(cap)}` : `api/dimming/${encodeURIComponent(dim)}`,
                               undefined, end);
        if (!res.ok) report(errorText(res));
        refreshSoon();
      };
      end().catch(report);
    });
    $("filter").addEventListener("input", draw);
    $("problems").addEventListener("change", draw);
    $("hours").addEventListener("change", () => {
      S.hours = Number($("hours").value);
      S.live = S.live.filter((s) => s.t >= Date.now() / 1000 - S.hours * 3600);
      loadHistory().catch(report);
    });
    // the now line moves, the history grows
    setInterval(() => { if (S.state) { if (S.streamUp) sampleLive(); draw(); } }, 5000); // no live samples while cut off
    setInterval(checkStale, 1000);
    setInterval(() => { if (S.site && S.streamUp) loadHistory().catch(report); }, 300000);
  }

  async function start() {
    const site = await get("api/site");
    if (!site) return;
    setSite(site);
    follow();
  }

  window.nowblockPage = S; // what the page holds, for a look in the browser's console (and the tests)
  wire();
  start().catch(report);
})();
