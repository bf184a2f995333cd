// Jobs: submitted by this node, run here for others, and the negotiations of both roles.
"use strict";
(() => {
  const { el, table, bar, pill, code, short, units, when, replace, get, bytes } = CPN;

  const provider = (j) => {
    const a = j.attempts[j.attempts.length - 1];
    return a ? code(short(a.provider, 20), a.provider) : "–";
  };
  const price = (j) => {
    const a = j.attempts[j.attempts.length - 1];
    return a ? units(a.price) : "–";
  };

  CPN.poll(async () => {
    const [list, served, agreements] = await Promise.all([
      get("/v1/jobs?limit=200"), get("/v1/dashboard/served"), get("/v1/agreements?limit=50"),
    ]);
    replace(
      "submitted",
      table(
        [
          ["Job", (j) => el("a", { href: "/job?id=" + encodeURIComponent(j.id), class: "job-link" }, code(j.id))],
          ["State", (j) => pill(j.state)],
          ["Provider", provider],
          ["Price", price],
          ["Submitted", (j) => when(j.created_at)],
          ["Detail", (j) => (j.result ? j.result.outcome + ", exit " + j.result.exit_code : j.detail)],
        ],
        list.jobs,
        "No job submitted from this node yet (cpn submit).",
      ),
    );
    replace(
      "served",
      table(
        [
          ["Agreement", (j) => code(short(j.agreement_id, 20), j.agreement_id)],
          ["Submitter", (j) => code(short(j.submitter, 20), j.submitter)],
          ["Phase", (j) => pill(j.phase)],
          ["Inputs", (j) => bar(j.transfer_total ? j.transfer_done / j.transfer_total : 1, bytes(j.transfer_done) + " of " + bytes(j.transfer_total))],
          ["GPUs", (j) => String(j.gpus.length)],
          ["Log lines", (j) => String(j.log_lines)],
        ],
        served.jobs,
        "No job run here for others yet.",
      ),
    );
    replace(
      "agreements",
      table(
        [
          ["Negotiation", (a) => code(short(a.id, 20), a.id)],
          ["Role", (a) => a.role],
          ["Peer", (a) => code(short(a.peer, 20), a.peer)],
          ["State", (a) => pill(a.state, "muted")],
          ["Updated", (a) => when(a.updated_at)],
          ["Detail", (a) => a.detail],
        ],
        agreements.agreements,
        "No negotiation yet.",
      ),
    );
  }, 2000);
})();
