// CPN dashboard: helpers shared by every page (plain JavaScript, no framework, no build step).
//
// Everything shown comes from the daemon's read-only routes on this port.  Text from the
// network (peer IDs, log lines, details) is only ever inserted with textContent, never as HTML.
"use strict";

const CPN = (() => {
  const TOKEN_KEY = "cpn-dashboard-token";

  // A token handed over in the address (#token=...) is kept in this browser's storage for
  // this origin only, and removed from the address bar (and so from history and screenshots).
  const handed = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (handed) {
    localStorage.setItem(TOKEN_KEY, decodeURIComponent(handed[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }

  const token = () => localStorage.getItem(TOKEN_KEY) || "";
  const authHeaders = () => (token() ? { Authorization: "Bearer " + token() } : {});

  class HttpError extends Error {
    constructor(status, body) {
      super((body && (body.detail || body.error)) || "HTTP " + status);
      this.status = status;
    }
  }

  async function request(method, path) {
    const r = await fetch(path, { method, headers: authHeaders(), cache: "no-store" });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new HttpError(r.status, body);
    return body;
  }
  const get = (path) => request("GET", path);
  const post = (path) => request("POST", path);

  // GET that answers null for a route this daemon does not have (404).
  async function maybe(path) {
    try {
      return await get(path);
    } catch (e) {
      if (e.status === 404) return null;
      throw e;
    }
  }

  // Each object of an NDJSON answer (e.g. /v1/jobs/{id}/events?follow=1), as it arrives.
  async function ndjson(path, onItem) {
    const r = await fetch(path, { headers: authHeaders(), cache: "no-store" });
    if (!r.ok) throw new HttpError(r.status, await r.json().catch(() => ({})));
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl).trim();
        buffered = buffered.slice(nl + 1);
        if (line) onItem(JSON.parse(line));
      }
    }
  }

  // el("td", {class: "num"}, "text", child, ...): an element; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "onclick") node.addEventListener("click", v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  // A table: columns [[title, row => cell]], cells are strings or elements.
  function table(columns, rows, empty) {
    if (!rows.length) return el("p", { class: "muted" }, empty || "None.");
    return el(
      "table",
      {},
      el("thead", {}, el("tr", {}, columns.map(([title]) => el("th", {}, title)))),
      el("tbody", {}, rows.map((row) => el("tr", {}, columns.map(([, cell]) => el("td", {}, cell(row)))))),
    );
  }

  // A horizontal bar: fraction 0..1 and its label.
  function bar(fraction, label, kind) {
    const pct = Math.max(0, Math.min(1, Number(fraction) || 0)) * 100;
    const fill = el("span", { class: "fill" + (kind ? " " + kind : "") });
    fill.style.width = pct.toFixed(1) + "%";
    return el("span", { class: "bar", title: label }, fill, el("span", { class: "label" }, label));
  }

  const pill = (text, kind) => el("span", { class: "pill " + (kind || text) }, text);
  const short = (id, n) => (id && id.length > (n || 16) ? id.slice(0, (n || 16) - 6) + "…" + id.slice(-5) : id || "");
  const code = (text, full) => el("code", { title: full || text }, text);
  const mib = (m) => (m >= 1024 * 1024 ? (m / 1048576).toFixed(1) + " TiB" : m >= 1024 ? (m / 1024).toFixed(1) + " GiB" : m + " MiB");
  const bytes = (b) => (b >= 1048576 ? mib(Math.round(b / 1048576)) : b >= 1024 ? (b / 1024).toFixed(1) + " KiB" : b + " B");
  const cores = (millis) => (millis / 1000).toFixed(millis % 1000 ? 2 : 0);
  // Prices are micro-units on the wire; shown in units with six decimals, like `cpn` prints them.
  const units = (micro) => (micro === null || micro === undefined ? "–" : (micro / 1e6).toFixed(6));
  const when = (unix) => (unix ? new Date(unix * 1000).toLocaleString() : "–");
  function duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    if (Math.abs(s) < 120) return s + " s";
    if (Math.abs(s) < 7200) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function replace(id, ...children) {
    const node = document.getElementById(id);
    node.replaceChildren(...children.flat());
    return node;
  }

  function showError(e) {
    const box = document.getElementById("error");
    if (!box) return;
    box.hidden = !e;
    box.textContent = e ? "Cannot read the daemon: " + e.message : "";
  }

  // Run render() now and every `ms` milliseconds; the page is marked ready after the first
  // render that worked (the browser test waits for data-ready="1").
  function poll(render, ms) {
    let busy = false;
    async function tick() {
      if (busy) return;
      busy = true;
      try {
        await render();
        showError(null);
        document.body.dataset.ready = "1";
      } catch (e) {
        showError(e);
      } finally {
        busy = false;
      }
    }
    tick();
    if (ms) setInterval(tick, ms);
  }

  const PAGES = [
    ["/", "Overview"], ["/gpus", "GPUs"], ["/network", "Peers & adverts"], ["/jobs", "Jobs"],
    ["/transfers", "Transfers"], ["/ledger", "Ledger"],
  ];

  async function header() {
    const top = document.getElementById("top");
    const here = location.pathname === "/job" ? "/jobs" : location.pathname;
    const links = PAGES.map(([href, title]) => el("a", { href, class: href === here ? "here" : null }, title));
    const auth = el("span", { id: "auth", class: "auth" });
    top.replaceChildren(el("a", { href: "/", class: "brand" }, "CPN node"), el("nav", {}, links), auth);
    document.body.prepend(el("div", { id: "error", class: "error", hidden: true }));
    await session();
  }

  // The token box: actions (cancel) need the token from the data dir's dashboard.token.
  async function session() {
    const auth = document.getElementById("auth");
    let s;
    try {
      s = await get("/v1/dashboard/session");
    } catch (e) {
      return;
    }
    CPN.authorised = s.authorised;
    if (s.authorised) {
      const lock = el("button", { type: "button", onclick: () => { localStorage.removeItem(TOKEN_KEY); location.reload(); } }, "Lock");
      auth.replaceChildren(pill("actions unlocked", "ok"), lock);
      return;
    }
    const input = el("input", { type: "password", placeholder: "token (" + s.token_file + ")", size: 22, "aria-label": "dashboard token" });
    const unlock = el("button", { type: "button", onclick: () => { localStorage.setItem(TOKEN_KEY, input.value.trim()); location.reload(); } }, "Unlock");
    auth.replaceChildren(s.private ? pill("private: token needed", "warn") : pill("read-only", "muted"), input, unlock);
  }

  document.addEventListener("DOMContentLoaded", header);

  return {
    get, post, maybe, ndjson, el, table, bar, pill, short, code, mib, bytes, cores, units, when,
    duration, replace, poll, showError, authorised: false,
  };
})();
