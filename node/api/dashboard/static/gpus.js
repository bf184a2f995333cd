// GPUs: live utilisation and memory (re-sampled by the daemon at most once a second), holder.
"use strict";
(() => {
  const { el, bar, pill, code, mib, replace, get } = CPN;

  function card(g, fake) {
    const usedFrac = g.memory_total_mib ? g.memory_used_mib / g.memory_total_mib : 0;
    const util = g.utilisation_gpu_pct;
    return el(
      "section",
      { class: "card gpu", "data-uuid": g.uuid },
      el("h2", {}, "GPU " + g.index + " · " + g.name, pill(g.state), fake ? pill("fake", "fake") : null),
      el("div", {}, "Utilisation"),
      util === null || util === undefined ? el("span", { class: "muted" }, "not reported") : bar(util / 100, util + " %", util > 80 ? "hot" : ""),
      el("div", {}, "Memory"),
      bar(usedFrac, mib(g.memory_used_mib) + " of " + mib(g.memory_total_mib) + " used", usedFrac > 0.9 ? "hot" : ""),
      el(
        "dl",
        { class: "kv" },
        el("dt", {}, "Model"), el("dd", { class: "model" }, g.model),
        el("dt", {}, "UUID"), el("dd", {}, code(g.uuid)),
        el("dt", {}, "Compute capability"), el("dd", {}, g.compute_capability),
        el("dt", {}, "MIG"), el("dd", {}, g.mig === null ? "not supported" : g.mig ? "on" : "off"),
        el("dt", {}, "Held by"), el("dd", {}, g.held_by ? code(CPN.short(g.held_by, 20), g.held_by) : "–"),
        el("dt", {}, "Figures"), el("dd", {}, g.live ? "live" : "from the last probe"),
      ),
    );
  }

  CPN.poll(async () => {
    const r = await get("/v1/dashboard/gpus");
    const note = [];
    if (r.fake) note.push("Fake GPUs (discovery.fake_gpus): a testnet inventory, not real hardware.");
    if (r.driver_version) note.push("Driver " + r.driver_version + ", CUDA " + r.cuda_driver_version + ".");
    if (r.stale) note.push("NVML is slow to answer: showing the previous sample.");
    if (r.error) note.push("Live sampling failed: " + r.error);
    replace("gpu-note", note.join(" "));
    if (!r.gpus.length) {
      replace("gpus", el("p", { class: "muted" }, "No GPUs found" + (r.nvml_error ? ": " + r.nvml_error : ".")));
      return;
    }
    replace("gpus", r.gpus.map((g) => card(g, r.fake)));
  }, 1000);
})();
