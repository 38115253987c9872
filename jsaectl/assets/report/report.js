// jsaectl report: graph highlighting and the connections filter. No network, no libraries.
(function () {
  "use strict";
  const graph = document.getElementById("graph");
  const table = document.getElementById("connections");
  const filter = document.getElementById("filter");
  let pinned = null;

  function edgesOf(side, latent) {
    return graph.querySelectorAll(`.edge[data-${side}="${latent}"]`);
  }

  function highlight(node) {
    graph.querySelectorAll(".hl, .linked").forEach((el) => el.classList.remove("hl", "linked"));
    if (table) table.querySelectorAll("tr.hl").forEach((tr) => tr.classList.remove("hl"));
    if (!node) { graph.classList.remove("focus"); return 0; }
    const side = node.dataset.side, latent = node.dataset.latent;
    const other = side === "in" ? "out" : "in";
    graph.classList.add("focus");
    node.classList.add("hl");
    const edges = edgesOf(side, latent);
    edges.forEach((e) => {
      e.classList.add("hl");
      const peer = graph.querySelector(`.node[data-side="${other}"][data-latent="${e.dataset[other]}"]`);
      if (peer) peer.classList.add("linked");
    });
    if (table) table.querySelectorAll(`tr[data-${side}="${latent}"]`).forEach((tr) => tr.classList.add("hl"));
    return edges.length;
  }

  if (graph) {
    graph.querySelectorAll(".node").forEach((node) => {
      node.addEventListener("mouseenter", () => { if (!pinned) highlight(node); });
      node.addEventListener("mouseleave", () => { if (!pinned) highlight(null); });
      node.querySelector("circle").addEventListener("click", (event) => {
        event.preventDefault();
        pinned = pinned === node ? null : node;
        highlight(pinned);
      });
    });
  }

  function applyFilter(text) {
    if (!table) return 0;
    const words = text.trim().toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    table.querySelectorAll("tbody tr").forEach((tr) => {
      const hay = tr.textContent.toLowerCase();
      const ok = words.every((w) => hay.includes(w));
      tr.hidden = !ok;
      if (ok) shown += 1;
    });
    return shown;
  }
  if (filter) filter.addEventListener("input", () => applyFilter(filter.value));

  // A check the tests run in a headless browser (index.html#selftest): click the first input
  // latent, count the edges it lights up, filter the table for a latent id and for nothing.
  if (graph && location.hash === "#selftest") {
    const node = graph.querySelector(".node.in");
    const circle = node.querySelector("circle");
    circle.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    const lit = graph.querySelectorAll(".edge.hl").length;
    const expected = edgesOf("in", node.dataset.latent).length;
    const rows = table.querySelectorAll("tbody tr").length;
    const byId = applyFilter(node.dataset.latent);
    const none = applyFilter("\u2603no-such-text\u2603");
    applyFilter("");
    document.body.dataset.selftest = JSON.stringify({ latent: node.dataset.latent, lit, expected, rows, byId, none,
      pinnedRows: table.querySelectorAll("tr.hl").length });
  }
  document.body.dataset.ready = "1";
})();
