// Circuit: CD-T shares and the EAP circuit of the current input, found as a background job whose progress is
// polled; the circuit as a graph (the report's figure), the ranked components and the top edges.
"use strict";
var circuit = {};
var CIRCUIT_CAPTIONS = {
  graph: "The circuit: layers in rows, heads and MLPs as nodes (coloured by CD-T's share); red edges carry the answer",
  cdt: "CD-T: the source's share of the answer logit per head and MLP",
  curve: "Edges kept against the share of the clean-corrupt gap recovered"
};

circuit.options = function (inputId) {
  var body = {input: inputId, source: mm.$("source").value, noise: Number(mm.$("noise").value) || 3, methods: []};
  document.querySelectorAll('input[name="method"]:checked').forEach(function (c) { body.methods.push(c.value); });
  var box = mm.$("box").value.trim(), target = mm.$("target").value.trim(), foil = mm.$("foil").value.trim();
  if (box) body.box = box.split(",").map(Number);
  if (target) body.target = target;
  if (foil) body.foil = foil;
  if (mm.$("variant").value === "patching") { body.norms = "marginal"; body.rest = "replaced"; }
  return body;
};

circuit.run = function (inputId) {
  mm.$("circuit").hidden = true;
  return mm.job("circuit", "/api/circuit", circuit.options(inputId)).then(function (job) {
    if (job.state === "done") circuit.show(job.result);
  });
};

circuit.show = function (found) {
  var facts = ["source: " + found.source.kind + " (" + found.source.positions.length + " positions)"];
  if (found.cdt) facts.push("answer " + found.cdt.answer + (found.cdt.foil ? " vs " + found.cdt.foil : "") +
                            " · logit " + found.cdt.logit.toFixed(2) + ", from the source " + found.cdt.source_logit.toFixed(2));
  if (found.eap) facts.push(found.eap.edges_kept + " of " + found.eap.edges + " edges recover " +
                            Math.round(100 * found.eap.recovered) + "% of the gap (" + found.eap.corruption + ")");
  mm.$("circuit-facts").textContent = "· " + facts.join(" · ");
  var graph = {}, others = {};
  Object.keys(found.figures).forEach(function (name) {
    (name === "graph" ? graph : others)[name] = found.figures[name];
  });
  mm.figures(mm.$("circuit-graph"), graph, CIRCUIT_CAPTIONS);
  mm.figures(mm.$("circuit-figures"), others, CIRCUIT_CAPTIONS);
  mm.rows(mm.$("components"), ["rank", "component", "total", "direct", "direct, rest"],
          found.cdt ? found.cdt.components.map(function (c) {
            return [c.rank, c.component, c.total, c.direct, c.direct_rest];
          }) : []);
  var edges = found.eap ? found.eap.top_edges : [];  // the circuit's edges, strongest first
  mm.rows(mm.$("edges"), ["edge (" + Math.min(20, edges.length) + " of the circuit's " + edges.length + ")", "score"],
          edges.slice(0, 20).map(function (e) { return [e.edge, e.score]; }));
  found.warnings.forEach(function (w) { mm.showError("warning: " + w); });
  mm.$("circuit").hidden = false;
};

mm.inputForm(circuit.run);
