// Neurons: modality-specific neurons of the loaded model and the strongest of each modality, (when asked)
// domain-specific neurons per question type and tower, and any decoder neuron's top patches on a click.
"use strict";
mm.$("neurons-form").addEventListener("submit", function (event) {
  event.preventDefault();
  mm.showError("");
  mm.busy(true);
  mm.post("/api/neurons", {samples: Number(mm.$("samples").value), ratio: Number(mm.$("ratio").value),
                           domains: mm.$("domains").checked})
    .then(function (started) {
      return mm.poll(started.id, function (job) {  // "waiting…" or "running…", never a finished state
        if (job.state === "waiting" || job.state === "running") { mm.busyWhat = job.state; mm.busyTick(); }
      });
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
      mm.figures(mm.$("neuron-figures"), {depth: found.figures.depth}, {depth: "Where the selected neurons sit"});
      var strongest = [];
      labels.forEach(function (label) {
        found.strongest[label].forEach(function (n) { strongest.push({row: [label, name(n), n.score], neuron: n}); });
      });
      pickable(mm.$("strongest"), ["modality", "neuron", "score"], strongest);
      showTop(found.top_image_neuron, found.figures.top_image_neuron);
      showDomains(found.domains, found.domain_neurons, found.domain_warning);
    }).catch(mm.fail);
});

function name(n) { return n.site + "[" + n.index + "]"; }

// Rows of neurons; a click on a decoder neuron's row fetches its top patches.
function pickable(table, header, entries) {
  mm.rows(table, header, entries.map(function (e) { return e.row; }));
  entries.forEach(function (e, k) {
    if (e.neuron.site.indexOf("lm.") !== 0) return;  // top patches are found for decoder neurons
    var tr = table.rows[k + 1];
    tr.classList.add("pick");
    tr.title = "show the top patches of " + name(e.neuron);
    tr.addEventListener("click", function () { pick(e.neuron); });
  });
}

function pick(n) {
  mm.showError("");
  mm.busy(true, "finding its top patches");
  mm.post("/api/neurons/top", {site: n.site, index: n.index, samples: Number(mm.$("samples").value)})
    .then(function (found) { mm.busy(false); showTop(found, found.figure); })
    .catch(mm.fail);
}

function showTop(top, figure) {
  mm.$("top-name").textContent = top ? "· " + name(top) : "· none found";
  mm.rows(mm.$("top-patches"), ["sample", "activation", "patch (row, col)"], !top ? [] :
          top.samples.map(function (s, k) { return [s, top.values[k], "(" + top.patches[k].join(", ") + ")"]; }));
  mm.figures(mm.$("top-figure"), figure ? {top: figure} : {},
             {top: "Top-activating samples of " + (top ? name(top) : "") + ", its strongest patch boxed"});
}

function showDomains(counts, most, warning) {
  mm.$("domain-part").hidden = !counts;
  if (!counts) return;
  mm.$("domain-warning").hidden = !warning;  // the listed neurons fire alike in every domain
  mm.$("domain-warning").textContent = warning ? "Note: " + warning + "." : "";
  var domains = Object.keys(counts);
  var towers = domains.length ? Object.keys(counts[domains[0]]) : [];
  mm.rows(mm.$("domain-counts"), ["domain"].concat(towers), domains.map(function (domain) {
    return [domain].concat(towers.map(function (tower) { return counts[domain][tower]; }));
  }));
  var rows = [];
  domains.forEach(function (domain) {
    most[domain].forEach(function (n) { rows.push({row: [domain, name(n), n.entropy], neuron: n}); });
  });
  pickable(mm.$("domain-top"), ["domain", "neuron", "entropy"], rows);
}
