// bandit-router dashboard: polls GET /admin/arms and GET /admin/timeline with the admin bearer token.
// The token comes from the URL fragment (#token=..., removed from the address bar at once) or the form,
// and lives in sessionStorage (this tab only). Every value is put on the page as text, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "bandit-router-admin-token";
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                  "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];
  const $ = (id) => document.getElementById(id);

  // -- settings from the fragment: token (taken out of the URL), refresh seconds, window:bucket ------
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, hash.get("token"));
    hash.delete("token");
    const rest = hash.toString();
    history.replaceState(null, "", location.pathname + location.search + (rest ? "#" + rest : ""));
  }
  const refreshS = Math.max(1, Number(hash.get("refresh")) || 5);
  if (hash.has("window")) $("window").value = hash.get("window");
  if (!$("window").value) $("window").value = "3600:60";

  let timer = null;
  let colorOf = new Map();

  function el(tag, attrs, ...children) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = v;
      else if (k === "class") node.setAttribute("class", v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  const fmt = {
    pct: (x) => (100 * x).toFixed(1) + "%",
    q: (x) => (x === null || x === undefined ? "–" : x.toFixed(3)),
    usd: (x) => (x === null || x === undefined ? "–" : "$" + (x < 0.01 ? x.toPrecision(3) : x.toFixed(4))),
    ms: (x) => (x === null || x === undefined ? "–" : Math.round(x)),
    time: (t) => new Date(t * 1000).toLocaleTimeString(),
  };

  function swatch(model) {
    const s = el("span", { class: "swatch" });
    s.style.background = colorOf.get(model) || "#999";
    return s;
  }

  // -- fetching --------------------------------------------------------------------------------------
  class AuthError extends Error {}

  async function getJSON(path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const r = await fetch(path, { headers, cache: "no-store", credentials: "omit", redirect: "error" });
    if (r.status === 401) throw new AuthError("the admin token was not accepted");
    let body = null;
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error((body && body.error && body.error.message) || r.status + " " + r.statusText);
    return body;
  }

  function showLogin(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("main").hidden = true;
    $("signout").hidden = true;
    $("login").hidden = false;
    if (message) $("login-message").textContent = message + ": enter the admin token.";
    $("status").textContent = "signed out";
    $("token").focus();
  }

  async function refresh() {
    clearTimeout(timer);
    const [windowS, bucketS] = $("window").value.split(":");
    try {
      const [arms, tl] = await Promise.all([
        getJSON("/admin/arms"),
        getJSON(`/admin/timeline?window_s=${windowS}&bucket_s=${bucketS}`),
      ]);
      render(arms, tl);
      $("login").hidden = true;
      $("main").hidden = false;
      $("signout").hidden = !sessionStorage.getItem(TOKEN_KEY);
      $("status").className = "";
      $("status").textContent = `updated ${fmt.time(tl.now)} · every ${refreshS} s`;
    } catch (e) {
      if (e instanceof AuthError) { showLogin(e.message); return; }
      $("status").className = "error";
      $("status").textContent = "refresh failed: " + e.message;
    }
    timer = setTimeout(refresh, refreshS * 1000);
  }

  // -- rendering -------------------------------------------------------------------------------------
  function render(arms, tl) {
    colorOf = new Map(tl.models.map((m, i) => [m, COLORS[i % COLORS.length]]));
    renderHealth(arms.health || {});
    renderEvents(tl.events);
    const box = $("categories");
    const cats = Object.keys(arms.categories);
    const windowTotal = (c) => Object.values(tl.categories[c] || {}).flat().reduce((a, b) => a + b, 0);
    const allTime = (c) => Object.values(arms.categories[c]).reduce((a, r) => a + r.decisions, 0);
    // busiest first: this window's traffic, then all-time decisions
    cats.sort((a, b) => windowTotal(b) - windowTotal(a) || allTime(b) - allTime(a) || a.localeCompare(b));
    box.replaceChildren(...cats.map((c) => renderCategory(c, arms.categories[c], tl, windowTotal(c))));
  }

  function renderHealth(health) {
    const rows = Object.entries(health).map(([model, h]) => el("tr", { "data-model": model },
      el("td", {}, swatch(model), model),
      el("td", { class: "state-" + h.breaker, text: h.breaker.replace("_", "-") }),
      el("td", { class: "num", text: h.calls }),
      el("td", { class: "num", text: fmt.pct(h.error_rate_recent) }),
      el("td", { class: "num", text: `${fmt.ms(h.latency_p50_ms)} / ${fmt.ms(h.latency_p99_ms)}` }),
      el("td", { class: "num", text: h.times_opened }),
      el("td", { class: "err", text: h.last_error || "" })));
    $("health").tBodies[0].replaceChildren(...rows);
  }

  function renderEvents(events) {
    const items = events.slice(0, 100).map((e) => el("li", { class: e.kind },
      `${fmt.time(e.t)} · ${e.category ? e.category + " / " : ""}${e.model}: ${e.message}`));
    $("events").replaceChildren(...(items.length ? items : [el("li", { class: "none", text: "none" })]));
  }

  function renderCategory(name, models, tl, inWindow) {
    const node = $("category-template").content.firstElementChild.cloneNode(true);
    node.dataset.category = name;
    const total = Object.values(models).reduce((a, r) => a + r.decisions, 0);
    node.querySelector(".name").textContent = name;
    node.querySelector(".summary").textContent =
      `${total} decisions in all · ${inWindow} in this window`;
    node.querySelector(".summary").dataset.total = total;
    node.querySelector(".chart-box").hidden = total === 0;  // never routed to: the priors are all there is
    drawShare(node.querySelector(".chart"), tl.categories[name] || {}, tl);
    node.querySelector(".t0").textContent = fmt.time(tl.start);
    node.querySelector(".t1").textContent = fmt.time(tl.start + tl.buckets * tl.bucket_s);
    node.querySelector(".legend").replaceChildren(...tl.models.map((m) => el("span", {}, swatch(m), m)));
    const rows = Object.entries(models).map(([model, r]) => {
      const lo = Math.max(0, r.quality_mean - 1.96 * r.quality_sd);
      const hi = Math.min(1, r.quality_mean + 1.96 * r.quality_sd);
      const state = !r.enabled ? "disabled" : r.serves ? "serving" : "not serving";
      return el("tr", { "data-model": model },
        el("td", {}, swatch(model), model),
        el("td", { class: r.enabled ? "" : "state-disabled", text: state }),
        el("td", { class: "num", "data-k": "decisions", text: r.decisions }),
        el("td", { class: "num", "data-k": "share", text: fmt.pct(r.traffic_share) }),
        el("td", { class: "num", "data-k": "quality", text: `${fmt.q(r.quality_mean)} [${fmt.q(lo)}, ${fmt.q(hi)}]` }),
        el("td", {}, intervalBar(model, r.quality_mean, lo, hi)),
        el("td", { class: "num", "data-k": "cost", text: fmt.usd(r.mean_cost_usd) }),
        el("td", { class: "num", "data-k": "feedback", text: r.feedback }));
    });
    node.querySelector("tbody").replaceChildren(...rows);
    return node;
  }

  // The posterior mean of quality and its 95% interval on a 0..1 scale.
  function intervalBar(model, mean, lo, hi) {
    const c = colorOf.get(model) || "#999";
    return el("svg:svg", { class: "interval", viewBox: "0 0 100 10", preserveAspectRatio: "none" },
      el("svg:line", { x1: 0, x2: 100, y1: 5, y2: 5, stroke: "#dde3e8", "stroke-width": 1 }),
      el("svg:rect", { x: 100 * lo, y: 2, width: Math.max(0.5, 100 * (hi - lo)), height: 6, fill: c, opacity: 0.3 }),
      el("svg:rect", { x: 100 * mean - 0.75, y: 0, width: 1.5, height: 10, fill: c }));
  }

  // Traffic share per model per bucket as stacked columns, with the bucket's volume as a grey strip.
  function drawShare(svg, counts, tl) {
    const W = 800, H = 180, STRIP = 24, n = tl.buckets, w = W / n;
    const models = tl.models.filter((m) => counts[m]);
    const totals = Array.from({ length: n }, (_, b) => models.reduce((a, m) => a + counts[m][b], 0));
    const peak = Math.max(1, ...totals);
    const parts = [];
    for (let b = 0; b < n; b++) {
      if (!totals[b]) continue;
      let y = H - STRIP;
      const from = fmt.time(tl.start + b * tl.bucket_s);
      for (const m of models) {
        const k = counts[m][b];
        if (!k) continue;
        const h = (H - STRIP - 4) * (k / totals[b]);
        y -= h;
        parts.push(el("svg:rect", { x: b * w, y, width: Math.max(w - 0.5, 0.5), height: h, fill: colorOf.get(m) },
          el("svg:title", { text: `${from} · ${m}: ${k} of ${totals[b]} (${fmt.pct(k / totals[b])})` })));
      }
      const v = (STRIP - 2) * (totals[b] / peak);
      parts.push(el("svg:rect", { x: b * w, y: H - v, width: Math.max(w - 0.5, 0.5), height: v, fill: "#9aa5b1" },
        el("svg:title", { text: `${from}: ${totals[b]} decisions` })));
    }
    parts.push(el("svg:line", { x1: 0, x2: W, y1: H - STRIP, y2: H - STRIP, stroke: "#dde3e8" }));
    if (!models.length) {
      parts.push(el("svg:text", { x: W / 2, y: (H - STRIP) / 2, "text-anchor": "middle", fill: "#68737d",
                                  "font-size": 14, text: "no decisions in this window" }));
    }
    svg.setAttribute("aria-label", "traffic share per model over time");
    svg.replaceChildren(...parts);
  }

  // -- wiring ----------------------------------------------------------------------------------------
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("status").textContent = "loading…";
    refresh();
  });
  $("signout").addEventListener("click", () => { clearTimeout(timer); showLogin("signed out"); });
  $("window").addEventListener("change", refresh);
  refresh();
})();
