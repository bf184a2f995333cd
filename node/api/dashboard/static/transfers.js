// Transfers: every blob transfer of this daemon run, its progress, rate and ETA.
"use strict";
(() => {
  const { el, table, bar, pill, code, short, bytes, duration, replace, get } = CPN;

  CPN.poll(async () => {
    const r = await get("/v1/transfers");
    const rows = r.transfers.slice().reverse();
    replace(
      "transfers",
      table(
        [
          ["Blob", (t) => code(short(t.digest, 24), t.digest)],
          ["Direction", (t) => t.direction],
          ["Phase", (t) => pill(t.phase, t.error ? "bad" : t.phase === "done" ? "ok" : "muted")],
          ["Progress", (t) => bar(t.total_bytes ? t.done_bytes / t.total_bytes : 1, bytes(t.done_bytes) + " of " + bytes(t.total_bytes))],
          ["Rate", (t) => bytes(t.rate_bytes_per_s) + "/s"],
          ["ETA", (t) => (t.eta_s === null ? "–" : duration(t.eta_s))],
          ["Sources", (t) => String(Object.keys(t.sources).length)],
          ["Error", (t) => t.error || ""],
        ],
        rows,
        "No transfer in this daemon run.",
      ),
    );
    const stats = Object.entries(r.stats);
    replace("transfer-stats", table([["Counter", ([k]) => k], ["Value", ([, v]) => String(v)]], stats, "No counters."));
  }, 1000);
})();
