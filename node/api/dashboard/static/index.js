// Overview: identity, health and reachability, capacity, this node's advert, job counts.
"use strict";
(() => {
  const { el, table, bar, pill, code, mib, cores, duration, replace, maybe, get } = CPN;

  function kv(pairs) {
    return el("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function identity(id) {
    return kv([
      ["Peer ID", el("code", { id: "peer-id" }, id.peer_id)],
      ["Listen addresses", id.addrs.length ? el("div", {}, id.addrs.map((a) => el("div", {}, code(a)))) : "none"],
      ["Identifiers", String(id.identifiers.length) + " advertised"],
      ["Data directory", code(id.data_dir)],
      ["SHA-256", id.sha256_backend === "libcrypto" ? "libcrypto" : pill("pure Python: slow transfers", "warn")],
    ]);
  }

  // /v1/status (when this daemon has it) says more about reachability than the addresses.
  function reachability(status) {
    if (!status) return "not reported by this daemon (see the listen addresses)";
    const r = status.reachability;
    if (r === undefined || r === null) return "not reported";
    if (typeof r !== "object") return String(r);
    return el("div", {}, Object.entries(r).map(([k, v]) => el("div", {}, k + ": " + (typeof v === "object" ? JSON.stringify(v) : v))));
  }

  function health(h, status) {
    return kv([
      ["Status", pill(h.status, h.status === "ok" ? "ok" : "warn")],
      ["Uptime", duration(h.uptime_s)],
      ["Connected peers", String(h.peers)],
      ["Reachability", reachability(status)],
    ]);
  }

  function capacity(c) {
    const total = c.total || { gpus: 0, cpu_millis: 0, memory_mib: 0, disk_mib: 0 };
    const frac = (v, t) => (t ? v / t : 0);
    const row = (name, part) => ({ name, ...part });
    const rows = [row("Total", total), row("Free", c.free), row("Reserved (quotes)", c.reserved), row("Committed (agreements)", c.committed)];
    return table(
      [
        ["", (r) => r.name],
        ["GPUs", (r) => (r === rows[0] ? String(r.gpus) : bar(frac(r.gpus, total.gpus), r.gpus + " of " + total.gpus))],
        ["CPU cores", (r) => (r === rows[0] ? cores(r.cpu_millis) : bar(frac(r.cpu_millis, total.cpu_millis), cores(r.cpu_millis)))],
        ["Memory", (r) => (r === rows[0] ? mib(r.memory_mib) : bar(frac(r.memory_mib, total.memory_mib), mib(r.memory_mib)))],
        ["Disk", (r) => (r === rows[0] ? mib(r.disk_mib) : bar(frac(r.disk_mib, total.disk_mib), mib(r.disk_mib)))],
      ],
      rows,
    );
  }

  function advert(a) {
    const own = a.own;
    if (!own) return el("p", { class: "muted" }, "Not advertising (discovery disabled or not started).");
    if (own.type !== "advert") return kv([["Record", pill(own.type, "warn")], ["Sequence", String(own.seq)]]);
    const left = own.expires_in_s;
    return kv([
      ["Sequence", String(own.seq)],
      ["Expires in", el("span", { id: "advert-expiry" }, duration(left), " ", left > 0 ? pill("valid") : pill("expired"))],
      ["GPUs", own.gpus.length ? own.gpus.join(", ") : "none"],
      ["Free GPUs", String(own.free_gpus)],
      ["Identifiers", String(own.compute_ids)],
      ["Other adverts held", String(a.peers.length)],
    ]);
  }

  function jobs(list, served) {
    const counts = {};
    for (const j of list.jobs) counts[j.state] = (counts[j.state] || 0) + 1;
    const running = served.jobs.filter((j) => !["finished", "failed", "settled"].includes(j.phase)).length;
    return kv([
      ["Submitted", list.jobs.length ? el("span", {}, Object.entries(counts).map(([s, n]) => el("span", {}, pill(s), " " + n + " "))) : "none"],
      ["Run here for others", served.jobs.length + " (" + running + " active)"],
    ]);
  }

  CPN.poll(async () => {
    const [id, h, status, cap, adv, list, served] = await Promise.all([
      get("/v1/id"), get("/v1/health"), maybe("/v1/status"), get("/v1/dashboard/capacity"),
      get("/v1/dashboard/adverts"), get("/v1/jobs?limit=1000"), get("/v1/dashboard/served"),
    ]);
    replace("identity", identity(id));
    replace("health", health(h, status));
    replace("capacity", capacity(cap));
    replace("advert", advert(adv));
    replace("jobs", jobs(list, served));
  }, 2000);
})();
