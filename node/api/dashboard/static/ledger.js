// Ledger: totals earned and spent per peer (priced by the co-signed agreements), newest entries.
"use strict";
(() => {
  const { el, table, pill, code, short, units, when, replace, get } = CPN;

  function stat(label, value, id) {
    return el("div", { class: "stat" }, el("span", { class: "muted" }, label), el("span", { class: "big", id }, value));
  }

  CPN.poll(async () => {
    const [me, r] = await Promise.all([get("/v1/id"), get("/v1/dashboard/ledger?limit=100")]);
    const t = r.totals;
    replace(
      "totals",
      el(
        "div",
        { class: "stats" },
        stat("Earned (as provider)", units(t.earned), "total-earned"),
        stat("Spent (as submitter)", units(t.spent), "total-spent"),
        stat("Net", units(t.earned - t.spent), "total-net"),
        stat("Entries", String(t.entries), "total-entries"),
        stat("Disputed", String(t.disputed)),
        stat("Unpriced", String(t.unpriced)),
      ),
      el("p", { class: "muted" }, "Units; the ledger keeps micro-units (1 unit = 1,000,000). Disputed receipts count in no total."),
    );
    replace(
      "per-peer",
      table(
        [
          ["Peer", (p) => code(p.peer)],
          ["Jobs", (p) => String(p.jobs)],
          ["Earned from", (p) => units(p.earned)],
          ["Spent on", (p) => units(p.spent)],
          ["Disputed", (p) => String(p.disputed)],
        ],
        r.peers,
        "The ledger is empty.",
      ),
    );
    replace(
      "entries",
      table(
        [
          ["#", (e) => String(e.seq)],
          ["Recorded", (e) => when(e.recorded_at)],
          ["Role", (e) => (e.provider === me.peer_id ? "provider (earned)" : "submitter (spent)")],
          ["Peer", (e) => {
            const other = e.provider === me.peer_id ? e.submitter : e.provider;
            return code(short(other, 20), other);
          }],
          ["Outcome", (e) => (e.invalid ? pill(e.invalid, "bad") : e.outcome + ", exit " + e.exit_code)],
          ["Price", (e) => units(e.price)],
          ["Receipt", (e) => (e.accepted ? pill("accepted", "ok") : pill("disputed", "bad"))],
        ],
        r.entries,
        "No entry yet.",
      ),
    );
  }, 3000);
})();
