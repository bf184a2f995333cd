// One submitted job: summary, phase timeline, transfer progress and the live log, followed
// over /v1/jobs/{id}/events?follow=1 (NDJSON) until the job ends; cancel with the token.
"use strict";
(() => {
  const { el, table, bar, pill, code, units, when, duration, replace, get, post, bytes } = CPN;
  const FINAL = ["finished", "failed", "cancelled", "disputed"];
  const id = new URLSearchParams(location.search).get("id") || "";
  const phases = []; // {state, at}
  const log = document.getElementById("log");
  let lines = 0;

  function summary(j) {
    const a = j.attempts[j.attempts.length - 1];
    const r = j.result;
    const pairs = [
      ["Job", el("code", { id: "job-id" }, j.id)],
      ["State", el("span", { id: "job-state" }, pill(j.state), j.detail ? " " + j.detail : "")],
      ["Submitted", when(j.created_at)],
      ["Provider", a ? code(a.provider) : "–"],
      ["Price", a ? units(a.price) + " (agreed, whole job)" : "–"],
      ["Attempts", String(j.attempts.length)],
      ["Result", r ? r.outcome + ", exit code " + r.exit_code + ", " + duration(r.wall_ms / 1000) + " wall" : "–"],
      ["Outputs", r ? r.outputs.map((o) => o.path + " (" + bytes(o.size) + ")").join(", ") || "none" : "–"],
      ["Receipt", j.receipt ? (j.receipt.accepted ? pill("accepted", "ok") : pill("disputed", "bad")) : "–"],
      ["Results in", j.output_dir ? code(j.output_dir) : "–"],
    ];
    replace("summary", el("dl", { class: "kv" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
  }

  async function actions(j) {
    const s = await get("/v1/dashboard/session").catch(() => ({ authorised: false }));
    const final = FINAL.includes(j.state);
    const button = el("button", { type: "button", class: "danger", id: "cancel", disabled: !s.authorised || final }, "Cancel job");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        summary(await post("/v1/jobs/" + encodeURIComponent(j.id) + "/cancel"));
      } catch (e) {
        CPN.showError(e);
      }
    });
    const why = final ? "the job has ended" : s.authorised ? "" : "unlock with the token to cancel";
    replace("actions", button, why ? el("span", { class: "muted" }, " " + why) : null);
  }

  function timeline() {
    if (!phases.length) return replace("timeline", el("p", { class: "muted" }, "No phase yet."));
    const start = phases[0].at;
    const end = FINAL.includes(phases[phases.length - 1].state) ? phases[phases.length - 1].at : Math.floor(Date.now() / 1000);
    const span = Math.max(1, end - start);
    const rows = phases.map((p, i) => {
      const next = i + 1 < phases.length ? phases[i + 1].at : FINAL.includes(p.state) ? p.at : end;
      return { ...p, length: next - p.at };
    });
    replace(
      "timeline",
      el(
        "div",
        { class: "timeline" },
        table(
          [
            ["Phase", (p) => pill(p.state)],
            ["Started", (p) => new Date(p.at * 1000).toLocaleTimeString()],
            ["Took", (p) => (FINAL.includes(p.state) ? "–" : duration(p.length))],
            ["", (p) => {
              const seg = el("span", { class: "seg" });
              seg.style.marginLeft = ((100 * (p.at - start)) / span).toFixed(1) + "%";
              seg.style.width = ((100 * p.length) / span).toFixed(1) + "%";
              return seg;
            }],
          ],
          rows,
        ),
      ),
    );
  }

  function onEvent(ev) {
    if (ev.event === "log") {
      log.append(ev.line + "\n");
      lines += 1;
      log.scrollTop = log.scrollHeight;
    } else if (ev.event === "state") {
      const last = phases[phases.length - 1];
      if (!last || last.state !== ev.state) phases.push({ state: ev.state, at: ev.at });
      timeline();
    } else if (ev.event === "progress") {
      replace("progress", el("p", {}, "Inputs at the provider: "), bar(ev.total ? ev.done / ev.total : 1, bytes(ev.done) + " of " + bytes(ev.total)));
    } else if (ev.event === "end") {
      summary(ev);
      actions(ev);
    }
  }

  async function follow() {
    if (!id) {
      replace("summary", el("p", {}, "No job given: open a job from the Jobs page."));
      return;
    }
    const j = await get("/v1/jobs/" + encodeURIComponent(id));
    document.getElementById("title").textContent = "Job " + j.id.slice(0, 12);
    summary(j);
    await actions(j);
    replace("log-state", FINAL.includes(j.state) ? "(complete)" : "(live)");
    await CPN.ndjson("/v1/jobs/" + encodeURIComponent(j.id) + "/events?follow=1", onEvent);
    timeline();
    replace("log-state", "(complete, " + lines + " lines)");
    document.body.dataset.ready = "1";
  }

  follow().catch(CPN.showError);
})();
