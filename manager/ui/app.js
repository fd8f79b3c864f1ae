// ringcache dashboard: polls /cluster (JSON) and /metrics (Prometheus text)
// once a second and keeps the last five minutes of rates in this page.
// Plain JS with no dependencies, so the manager can embed it as is.
//
// Everything that comes from the API is put into the page with textContent
// or SVG attributes, never as markup.
"use strict";

(() => {
  const POLL_MS = 1000;
  const FETCH_TIMEOUT_MS = 3000;
  const HISTORY_MS = 5 * 60 * 1000;
  const MIN_SPAN_MS = 30 * 1000;
  const TOKEN_KEY = "ringcache.token";
  // States with their own colour; any other state string is shown neutrally
  // so a newer manager's states still render.
  const KNOWN_STATES = new Set(["up", "down", "joining", "unknown", "syncing", "leaving"]);
  // Identity colours of the nodes (inner ring and legend), distinct from the
  // state colours of the outer ring.
  const PALETTE = ["#58a6ff", "#d2a8ff", "#ffa657", "#79c0ff", "#f778ba", "#7ee787",
    "#e3b341", "#a5d6ff", "#ff9bce", "#56d4dd"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem(TOKEN_KEY);
  let prev = null; // counters of the previous /metrics sample
  let history = []; // {t, rate, errRate, hit, p50, p99}
  let timer = null;
  let busy = false;
  let waitingForToken = false;

  class Unauthorized extends Error {}

  // ---- fetching -----------------------------------------------------------

  async function fetchText(path) {
    const ctl = new AbortController();
    const t = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    try {
      const headers = token ? { Authorization: "Bearer " + token } : {};
      const r = await fetch(path, { headers, cache: "no-store", signal: ctl.signal });
      if (r.status === 401) throw new Unauthorized();
      if (!r.ok) throw new Error(path + " answered HTTP " + r.status);
      return await r.text();
    } catch (e) {
      if (e.name === "AbortError") throw new Error(path + " timed out");
      throw e;
    } finally {
      clearTimeout(t);
    }
  }

  async function tick() {
    if (busy) return;
    busy = true;
    let again = true;
    try {
      const [clusterText, metricsText] = await Promise.all([fetchText("/cluster"), fetchText("/metrics")]);
      const cluster = JSON.parse(clusterText);
      const now = Date.now();
      const counters = countersOf(parseProm(metricsText));
      sample(now, counters);
      showDashboard();
      render(cluster, counters, now);
      setConn("ok", "live · updated " + new Date(now).toLocaleTimeString());
    } catch (e) {
      if (e instanceof Unauthorized) {
        again = false;
        askForToken(token !== null);
      } else {
        $("dash").classList.add("stale");
        setConn("err", "manager not answering: " + e.message);
      }
    } finally {
      busy = false;
      if (again) schedule();
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(tick, POLL_MS);
  }

  function setConn(kind, text) {
    const c = $("conn");
    c.className = "conn conn-" + kind;
    c.textContent = text;
  }

  // ---- token --------------------------------------------------------------

  function askForToken(refused) {
    waitingForToken = true;
    if (refused) {
      sessionStorage.removeItem(TOKEN_KEY);
      token = null;
    }
    clearData();
    $("dash").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = !refused;
    $("forget-token").hidden = true;
    setConn("wait", "token required");
    $("token").focus();
  }

  function showDashboard() {
    if (waitingForToken || $("dash").hidden) {
      waitingForToken = false;
      $("login").hidden = true;
      $("dash").hidden = false;
    }
    $("dash").classList.remove("stale");
    $("forget-token").hidden = token === null;
  }

  // Removes every value the API gave, so a page without a valid token shows
  // nothing of the cluster.
  function clearData() {
    prev = null;
    history = [];
    $("nodes").tBodies[0].replaceChildren();
    $("ring").replaceChildren();
    $("ring-legend").replaceChildren();
    for (const id of ["s-up", "s-items", "s-bytes", "s-requests", "s-errors", "s-ring"]) {
      $(id).replaceChildren(document.createTextNode("–"));
    }
    for (const fig of document.querySelectorAll(".chart")) {
      fig.querySelector("svg").replaceChildren();
      fig.querySelector(".now").textContent = "";
      fig.querySelector(".axis").textContent = "";
    }
    $("near").hidden = true;
    $("near").textContent = "";
  }

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("token").value.trim();
    if (!v) return;
    token = v;
    sessionStorage.setItem(TOKEN_KEY, v);
    $("token").value = "";
    $("login-error").hidden = true;
    setConn("wait", "connecting…");
    tick();
  });

  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    clearTimeout(timer);
    askForToken(false);
  });

  // ---- metrics ------------------------------------------------------------

  // Parses the Prometheus text format into {name, labels, value} samples.
  function parseProm(text) {
    const out = [];
    const line_re = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
    const label_re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (const line of text.split("\n")) {
      if (line === "" || line[0] === "#") continue;
      const m = line_re.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[2]) {
        let l;
        label_re.lastIndex = 0;
        while ((l = label_re.exec(m[2])) !== null) {
          labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
        }
      }
      out.push({ name: m[1], labels, value: promNumber(m[3]) });
    }
    return out;
  }

  function promNumber(s) {
    if (s === "+Inf") return Infinity;
    if (s === "-Inf") return -Infinity;
    return Number(s);
  }

  // The counters the page derives its series from.
  function countersOf(samples) {
    const c = { requests: 0, errors: 0, getHits: 0, getMisses: 0, buckets: [] };
    for (const s of samples) {
      if (!Number.isFinite(s.value)) continue;
      if (s.name === "ringcache_http_requests_total") {
        c.requests += s.value;
        const status = Number(s.labels.status);
        if (status >= 500) c.errors += s.value;
        if (s.labels.method === "GET" && status === 200) c.getHits += s.value;
        if (s.labels.method === "GET" && status === 404) c.getMisses += s.value;
      } else if (s.name === "ringcache_http_request_duration_seconds_bucket") {
        c.buckets.push({ le: promNumber(s.labels.le), count: s.value });
      }
    }
    c.buckets.sort((a, b) => a.le - b.le);
    return c;
  }

  // Like PromQL's histogram_quantile over cumulative bucket counts: linear
  // interpolation inside the bucket that holds the rank.
  function quantile(q, buckets) {
    if (buckets.length === 0) return null;
    const total = buckets[buckets.length - 1].count;
    if (!(total > 0)) return null;
    const rank = q * total;
    for (let i = 0; i < buckets.length; i++) {
      const b = buckets[i];
      if (b.count < rank) continue;
      const lowerLe = i === 0 ? 0 : buckets[i - 1].le;
      const lowerCount = i === 0 ? 0 : buckets[i - 1].count;
      if (b.le === Infinity) return lowerLe;
      if (b.count === lowerCount) return b.le;
      return lowerLe + (b.le - lowerLe) * ((rank - lowerCount) / (b.count - lowerCount));
    }
    return null;
  }

  // Adds one point to the history from the change since the last sample.
  function sample(now, c) {
    const p = prev;
    prev = { t: now, ...c };
    history = history.filter((h) => h.t >= now - HISTORY_MS);
    // A counter that went down means the manager restarted: no rate for
    // this interval.
    if (!p || c.requests < p.requests) return;
    const dt = (now - p.t) / 1000;
    if (dt <= 0) return;
    const dHits = c.getHits - p.getHits;
    const dMisses = c.getMisses - p.getMisses;
    let deltas = [];
    if (c.buckets.length === p.buckets.length) {
      deltas = c.buckets.map((b, i) => ({ le: b.le, count: b.count - p.buckets[i].count }));
    }
    history.push({
      t: now,
      rate: (c.requests - p.requests) / dt,
      errRate: (c.errors - p.errors) / dt,
      hit: dHits + dMisses > 0 ? dHits / (dHits + dMisses) : null,
      p50: quantile(0.5, deltas),
      p99: quantile(0.99, deltas),
    });
  }

  // ---- formatting ---------------------------------------------------------

  const isNum = (v) => typeof v === "number" && Number.isFinite(v);

  function fmtInt(v) {
    return isNum(v) ? Math.round(v).toLocaleString("en-US") : "–";
  }

  function fmtBytes(v) {
    if (!isNum(v)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 ? String(Math.round(v)) : v.toFixed(v < 10 ? 1 : 0)) + " " + units[i];
  }

  function fmtPct(v) {
    return isNum(v) ? (v * 100).toFixed(v >= 0.995 || v === 0 ? 0 : 1) + "%" : "–";
  }

  function fmtRate(v) {
    if (!isNum(v)) return "–";
    if (v >= 1000) return (v / 1000).toFixed(1) + "k/s";
    return (v >= 10 ? v.toFixed(0) : v.toFixed(1)) + "/s";
  }

  function fmtSecs(v) {
    if (!isNum(v)) return "–";
    if (v < 0.001) return (v * 1e6).toFixed(0) + " µs";
    if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 2 : 1) + " ms";
    return v.toFixed(2) + " s";
  }

  function fmtAge(ms) {
    if (!isNum(ms)) return "never";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s ago";
    return Math.round(ms / 60000) + " min ago";
  }

  function fmtSpan(ms) {
    const s = Math.round(ms / 1000);
    return s < 60 ? s + " s" : Math.floor(s / 60) + " min" + (s % 60 ? " " + (s % 60) + " s" : "");
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function svgEl(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  const stateClass = (s) => "state-" + (KNOWN_STATES.has(s) ? s : "other");
  const nodeId = (n) => n.id ?? n.node_id ?? null;
  const nodeKey = (n) => String(nodeId(n) ?? n.address ?? "");

  // ---- rendering ----------------------------------------------------------

  function render(cluster, counters, now) {
    const nodes = Array.isArray(cluster.nodes) ? cluster.nodes : [];
    renderCards(cluster, nodes, counters);
    renderRing(nodes);
    renderNodes(nodes);
    renderCharts(now);
    renderNear(cluster.near_cache);
    renderWarnings(cluster.warnings);
    renderHotKeys(cluster.hot_keys);
  }

  // Each node's estimate of the keys taking most of its requests: a key
  // is listed once per replica its traffic reaches.
  function renderHotKeys(hot) {
    const rows = (Array.isArray(hot) ? hot : []).map((k) => {
      const tr = el("tr");
      const share = el("td", "share");
      if (isNum(k.share)) {
        share.appendChild(bar(k.share, k.share > 0.5 ? "bar-crit" : k.share > 0.2 ? "bar-warn" : ""));
        share.appendChild(el("span", "mem-text", fmtPct(k.share)));
      }
      tr.append(el("td", "key", String(k.key ?? "")), el("td", "node", String(k.node ?? "–")),
        el("td", "num rate", fmtInt(k.rate)), share);
      return tr;
    });
    $("hotkeys").tBodies[0].replaceChildren(...rows);
    $("hotkeys-none").hidden = rows.length > 0;
  }

  // What the manager says an operator should fix (several managers
  // without etcd, say): shown above everything while it holds.
  function renderWarnings(warnings) {
    const list = $("warnings");
    const items = Array.isArray(warnings) ? warnings.filter((w) => typeof w === "string") : [];
    list.replaceChildren(...items.map((w) => el("li", null, w)));
    list.hidden = items.length === 0;
  }

  function setValue(id, main, sub) {
    const e = $(id);
    e.replaceChildren(document.createTextNode(main));
    if (sub) e.appendChild(el("span", "sub", " " + sub));
  }

  function renderCards(cluster, nodes, c) {
    const up = nodes.filter((n) => n.state === "up").length;
    const sum = (f) => nodes.reduce((a, n) => a + (isNum(n[f]) ? n[f] : 0), 0);
    setValue("s-up", up + " / " + nodes.length);
    $("s-up").classList.toggle("bad", up < nodes.length);
    setValue("s-items", fmtInt(sum("items")));
    setValue("s-bytes", fmtBytes(sum("bytes")), "of " + fmtBytes(sum("memory_limit")));
    const last = history[history.length - 1];
    setValue("s-requests", fmtInt(c.requests), last ? fmtRate(last.rate) : "");
    setValue("s-errors", fmtInt(c.errors), last ? fmtRate(last.errRate) : "");
    $("s-errors").classList.toggle("bad", !!last && last.errRate > 0);
    setValue("s-ring", (cluster.replicas ?? "–") + " · " + (cluster.vnodes ?? "–"));
  }

  function arcPath(cx, cy, r, a0, a1) {
    const p = (a) => [cx + r * Math.sin(a), cy - r * Math.cos(a)];
    const [x0, y0] = p(a0);
    const [x1, y1] = p(a1);
    const large = a1 - a0 > Math.PI ? 1 : 0;
    return `M ${x0.toFixed(2)} ${y0.toFixed(2)} A ${r} ${r} 0 ${large} 1 ${x1.toFixed(2)} ${y1.toFixed(2)}`;
  }

  function renderRing(nodes) {
    const svg = $("ring");
    const legend = $("ring-legend");
    const cx = 110;
    const cy = 110;
    const parts = [];
    parts.push(svgEl("circle", { cx, cy, r: 86, class: "ring-track" }));
    const total = nodes.reduce((a, n) => a + (isNum(n.ring_share) && n.ring_share > 0 ? n.ring_share : 0), 0);
    // Arcs proportional to each node's share of the ring: the placement of
    // individual virtual nodes is not exposed by /cluster.
    const gap = nodes.length > 1 ? 0.025 : 0;
    let a = 0;
    const items = [];
    nodes.forEach((n, i) => {
      const share = isNum(n.ring_share) && n.ring_share > 0 && total > 0 ? n.ring_share / total : 0;
      const colour = PALETTE[i % PALETTE.length];
      const label = String(nodeId(n) ?? n.address ?? "?");
      const title = `${label} (${n.state}): ${fmtPct(n.ring_share)} of the ring`;
      if (share > 0) {
        const a0 = a + gap / 2;
        const a1 = a + share * 2 * Math.PI - gap / 2;
        const full = share >= 0.9999;
        const mk = (r, cls, extra) => {
          const e = full
            ? svgEl("circle", { cx, cy, r, class: cls, ...extra })
            : svgEl("path", { d: arcPath(cx, cy, r, a0, Math.max(a0, a1)), class: cls, ...extra });
          const t = svgEl("title");
          t.textContent = title;
          e.appendChild(t);
          return e;
        };
        parts.push(mk(86, "arc " + stateClass(n.state), { "data-node": nodeKey(n) }));
        parts.push(mk(66, "arc-id", { stroke: colour }));
      }
      a += share * 2 * Math.PI;
      const li = el("li");
      const sw = el("span", "swatch");
      sw.style.background = colour;
      li.append(sw, el("span", "legend-id", label), el("span", "badge " + stateClass(n.state), String(n.state)),
        el("span", "legend-share", fmtPct(n.ring_share)));
      items.push(li);
    });
    const up = nodes.filter((n) => n.state === "up").length;
    const big = svgEl("text", { x: cx, y: cy - 2, class: "ring-center" });
    big.textContent = `${up}/${nodes.length}`;
    const small = svgEl("text", { x: cx, y: cy + 18, class: "ring-center-sub" });
    small.textContent = "nodes up";
    parts.push(big, small);
    svg.replaceChildren(...parts);
    legend.replaceChildren(...items);
  }

  // Progress of a hand-off or warm-up, from whichever counts the node sends.
  function syncProgress(sync) {
    if (!sync || typeof sync !== "object") return null;
    const pairs = [["scanned", "to_scan"], ["keys_copied", "keys_total"], ["bytes_copied", "bytes_total"],
      ["done", "total"], ["copied", "total"]];
    let fraction = null;
    for (const [d, t] of pairs) {
      if (isNum(sync[d]) && isNum(sync[t]) && sync[t] > 0) {
        fraction = Math.min(1, Math.max(0, sync[d] / sync[t]));
        break;
      }
    }
    if (fraction === null && isNum(sync.progress)) fraction = Math.min(1, Math.max(0, sync.progress));
    const parts = [];
    for (const [k, v] of Object.entries(sync)) {
      if (!isNum(v) || k === "progress") continue;
      parts.push(k.replace(/_/g, " ") + " " + (k.startsWith("bytes") ? fmtBytes(v) : fmtInt(v)));
    }
    return { fraction, text: parts.join(" · ") };
  }

  function bar(fraction, cls) {
    const outer = el("div", "bar " + (cls || ""));
    const inner = el("div", "bar-fill");
    inner.style.width = (Math.min(1, Math.max(0, fraction)) * 100).toFixed(1) + "%";
    outer.appendChild(inner);
    return outer;
  }

  function renderNodes(nodes) {
    const rows = nodes.map((n, i) => {
      const tr = el("tr");
      tr.dataset.node = nodeKey(n);
      tr.dataset.state = String(n.state);
      const idCell = el("td", "id");
      const sw = el("span", "swatch");
      sw.style.background = PALETTE[i % PALETTE.length];
      idCell.append(sw, document.createTextNode(String(nodeId(n) ?? "–")));

      const stateCell = el("td", "state");
      stateCell.appendChild(el("span", "badge " + stateClass(n.state), String(n.state)));
      const sync = syncProgress(n.sync ?? n.handoff);
      if (sync) {
        const box = el("div", "sync");
        if (sync.fraction !== null) {
          box.appendChild(bar(sync.fraction, "bar-sync"));
          box.appendChild(el("span", "sync-pct", fmtPct(sync.fraction)));
        }
        if (sync.text) box.appendChild(el("div", "sync-text", sync.text));
        stateCell.appendChild(box);
      }

      const memCell = el("td", "mem");
      if (isNum(n.bytes) && isNum(n.memory_limit) && n.memory_limit > 0) {
        const f = n.bytes / n.memory_limit;
        memCell.appendChild(bar(f, f > 0.95 ? "bar-crit" : f > 0.8 ? "bar-warn" : ""));
        memCell.appendChild(el("span", "mem-text", fmtBytes(n.bytes) + " / " + fmtBytes(n.memory_limit)));
      } else {
        memCell.textContent = fmtBytes(n.bytes);
      }

      const inst = el("td", "instance", n.instance ? String(n.instance).slice(0, 8) : "–");
      if (n.instance) inst.title = String(n.instance);
      const age = el("td", "num age", fmtAge(n.last_heartbeat_age_ms));
      tr.append(idCell, el("td", "addr", String(n.address ?? "–")), stateCell,
        el("td", "num items", fmtInt(n.items)), memCell,
        el("td", "num evictions", fmtInt(n.evictions)),
        el("td", "num hit", fmtPct(n.hit_ratio)), age, inst);
      return tr;
    });
    $("nodes").tBodies[0].replaceChildren(...rows);
  }

  function renderNear(near) {
    const p = $("near");
    if (!near || typeof near !== "object") {
      p.hidden = true;
      return;
    }
    const total = (near.hits ?? 0) + (near.misses ?? 0);
    p.hidden = false;
    p.textContent = `Near cache in the manager: ${fmtInt(near.items)} items, ${fmtBytes(near.bytes)}, ` +
      `hit ratio ${total > 0 ? fmtPct(near.hits / total) : "–"}`;
  }

  const CHARTS = [
    { id: "c-rate", key: "rate", fmt: fmtRate },
    { id: "c-hit", key: "hit", fmt: fmtPct, max: 1 },
    { id: "c-p50", key: "p50", fmt: fmtSecs },
    { id: "c-p99", key: "p99", fmt: fmtSecs },
  ];

  function renderCharts(now) {
    for (const c of CHARTS) drawChart(c, now);
  }

  // A time series over the last five minutes; gaps where there is no value
  // (no requests, so no hit ratio or latency).
  function drawChart(c, now) {
    const fig = $(c.id);
    const svg = fig.querySelector("svg");
    const W = 300;
    const H = 80;
    const pts = history.map((h) => ({ t: h.t, v: h[c.key] }));
    const vals = pts.map((p) => p.v).filter(isNum);
    const max = c.max ?? Math.max(...vals, 0) * 1.15;
    const top = max > 0 ? max : 1;
    // The window grows with the history up to five minutes, so a page
    // opened a few seconds ago does not squeeze its data into one edge.
    const first = history.length ? history[0].t : now;
    const span = Math.min(HISTORY_MS, Math.max(MIN_SPAN_MS, now - first));
    const x = (t) => ((t - (now - span)) / span) * W;
    const y = (v) => H - 2 - (v / top) * (H - 6);
    const segments = [];
    let cur = [];
    for (const p of pts) {
      if (isNum(p.v)) cur.push([x(p.t), y(p.v)]);
      else if (cur.length) {
        segments.push(cur);
        cur = [];
      }
    }
    if (cur.length) segments.push(cur);
    const els = [];
    for (const f of [0.25, 0.5, 0.75]) {
      els.push(svgEl("line", { x1: 0, x2: W, y1: (H * f).toFixed(1), y2: (H * f).toFixed(1), class: "grid" }));
    }
    for (const s of segments) {
      const line = s.map(([px, py], i) => (i ? "L" : "M") + px.toFixed(1) + " " + py.toFixed(1)).join(" ");
      const area = line + ` L ${s[s.length - 1][0].toFixed(1)} ${H} L ${s[0][0].toFixed(1)} ${H} Z`;
      els.push(svgEl("path", { d: area, class: "area" }));
      els.push(svgEl("path", { d: line, class: "line" }));
    }
    svg.replaceChildren(...els);
    const last = pts.length ? pts[pts.length - 1].v : null;
    fig.querySelector(".now").textContent = isNum(last) ? c.fmt(last) : "–";
    fig.querySelector(".axis").textContent = `last ${fmtSpan(span)} · top ${c.fmt(top)}`;
  }

  tick();
})();
