// Neurons: modality-specific neurons of the loaded model, the top patches of the strongest image neuron,
// and (when asked) domain-specific neurons per question type and tower.
"use strict";
mm.$("neurons-form").addEventListener("submit", function (event) {
  event.preventDefault();
  mm.showError("");
  mm.busy(true);
  mm.post("/api/neurons", {samples: Number(mm.$("samples").value), ratio: Number(mm.$("ratio").value),
                           domains: mm.$("domains").checked})
    .then(function (started) {
      return mm.poll(started.id, function (job) { mm.$("busy").textContent = job.state + "…"; });
    })
    .then(function (job) {
      var found = job.result;
      mm.busy(false);
      mm.$("neurons").hidden = false;
      var labels = Object.keys(found.depth);
      var layers = labels.length ? found.depth[labels[0]].map(function (_, i) { return "L" + i; }) : [];
      mm.rows(mm.$("selected"), ["modality", "neurons"].concat(layers), labels.map(function (label) {
        return [label, found.selected[label]].concat(found.depth[label]);
      }));
      var top = found.top_image_neuron;
      mm.$("top-name").textContent = top ? "· " + top.site + "[" + top.index + "]" : "· none found";
      mm.rows(mm.$("top-patches"), ["sample", "activation", "patch (row, col)"], !top ? [] :
              top.samples.map(function (s, k) { return [s, top.values[k], "(" + top.patches[k].join(", ") + ")"]; }));
      mm.figures(mm.$("neuron-figures"), found.figures, {depth: "Where the selected neurons sit",
                 top_image_neuron: "Top-activating samples of the strongest image neuron, its strongest patch boxed"});
      showDomains(found.domains, found.domain_neurons);
    }).catch(mm.fail);
});

function showDomains(counts, most) {
  mm.$("domain-part").hidden = !counts;
  if (!counts) return;
  var domains = Object.keys(counts);
  var towers = domains.length ? Object.keys(counts[domains[0]]) : [];
  mm.rows(mm.$("domain-counts"), ["domain"].concat(towers), domains.map(function (domain) {
    return [domain].concat(towers.map(function (tower) { return counts[domain][tower]; }));
  }));
  var rows = [];
  domains.forEach(function (domain) {
    most[domain].forEach(function (n) { rows.push([domain, n.site + "[" + n.index + "]", n.entropy]); });
  });
  mm.rows(mm.$("domain-top"), ["domain", "neuron", "entropy"], rows);
}
