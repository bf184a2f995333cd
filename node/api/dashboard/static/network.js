// Peers and adverts: connections, the DHT, this node's signed advert and the adverts held here.
"use strict";
(() => {
  const { el, table, pill, code, short, units, duration, replace, get } = CPN;

  function own(a) {
    if (!a) return el("p", { class: "muted" }, "No record published.");
    if (a.type !== "advert") return el("p", {}, pill(a.type, "warn"), " seq " + a.seq);
    return el(
      "dl",
      { class: "kv" },
      el("dt", {}, "Sequence"), el("dd", {}, String(a.seq)),
      el("dt", {}, "Issued"), el("dd", {}, CPN.when(a.issued_at)),
      el("dt", {}, "Expires"), el("dd", {}, CPN.when(a.expires_at), " (in " + duration(a.expires_in_s) + ")"),
      el("dt", {}, "Addresses"), el("dd", {}, a.addrs.map((x) => el("div", {}, code(x)))),
      el("dt", {}, "GPUs"), el("dd", {}, a.gpus.join(", ") || "none"),
      el("dt", {}, "Price per GPU-hour"), el("dd", {}, units(a.price_gpu_hour)),
      el("dt", {}, "Container"), el("dd", {}, code(JSON.stringify(a.container))),
    );
  }

  CPN.poll(async () => {
    const [peers, adverts] = await Promise.all([get("/v1/peers"), get("/v1/dashboard/adverts")]);
    replace(
      "peers",
      el("p", {}, peers.connected.length + " connected · routing table " + peers.routing_table + " · DHT values " + peers.dht_values),
      table([["Peer ID", (p) => code(p)]], peers.connected.map((p) => p), "No connections."),
    );
    replace("own-advert", own(adverts.own));
    replace(
      "adverts",
      table(
        [
          ["Peer", (a) => code(short(a.peer_id, 24), a.peer_id)],
          ["Record", (a) => (a.valid ? pill(a.type, a.type === "advert" ? "valid" : "warn") : pill(a.reason || "invalid", "invalid"))],
          ["Seq", (a) => (a.seq === undefined ? "–" : String(a.seq))],
          ["GPUs", (a) => (a.gpus ? a.gpus.join(", ") || "none" : "–")],
          ["Free GPUs", (a) => (a.free_gpus === undefined ? "–" : String(a.free_gpus))],
          ["Price/GPU-h", (a) => units(a.price_gpu_hour)],
          ["Expires in", (a) => (a.expires_in_s === undefined ? "–" : duration(a.expires_in_s))],
        ],
        adverts.peers,
        "No other peer's advert is held here (they arrive with finds and DHT stores).",
      ),
    );
  }, 2000);
})();
