// Look inside: the logit lens (a word grid per layer over the image), attention flow, knockout; causal tracing
// on request, as a background job whose progress is polled.
"use strict";
var inside = {lens: null};
var CAPTIONS = {
  lens_emergence: "The answer's rank and probability per layer",
  flow_modalities: "Attention from the answer position to image, text and special tokens",
  flow_heads: "Share of attention on image tokens, per layer and head",
  knockout: "Change of P(answer) when the answer position may not attend to the image",
  resid: "Recovery rate: hidden state restored", attn: "Recovery rate: attention output restored",
  mlp: "Recovery rate: MLP output restored"
};

inside.run = function (inputId) {
  return mm.post("/api/lens", {input: inputId}).then(function (lens) {
    inside.lens = lens;
    inside.input = inputId;
    mm.$("lens").hidden = false;
    mm.$("lens-answer").textContent = "· answer " + lens.answer + " · emerges at " + (lens.emerges_at || "never");
    var slider = mm.$("layer");
    slider.max = Math.max(0, lens.grid.length - 1);
    slider.value = slider.max;
    slider.oninput = function () { inside.grid(Number(slider.value)); };
    inside.grid(Number(slider.value));
    mm.rows(mm.$("layers"), ["layer", "top-1", "p", "answer rank", "P(answer)", "attn image", "attn text"],
            lens.layers.map(function (l) {
              var a = l.attention || {};
              return [l.layer, l.top1, l.p, l.answer_rank, l.answer_prob, a.image, a.text];
            }));
    mm.figures(mm.$("lens-figures"), lens.figures, CAPTIONS);
  });
};

// One layer of the word grid: the input image behind, each patch labelled with its top-1 word.
inside.grid = function (layer) {
  var box = mm.$("word-grid"), lens = inside.lens;
  box.innerHTML = "";
  var entry = lens.grid[layer];
  mm.$("layer-name").textContent = lens.layers[layer] ? lens.layers[layer].layer : "";
  if (!entry) return;
  box.style.gridTemplateColumns = "repeat(" + entry.words[0].length + ", 40px)";
  box.style.backgroundImage = "url(/api/inputs/" + inside.input + "/image/0)";
  entry.words.forEach(function (row, r) {
    row.forEach(function (word, c) {
      var p = entry.probs[r][c] || 0;
      box.appendChild(mm.el("span", {title: "row " + r + ", col " + c + ": " + word + " (p " + p + ")",
                                     style: "background: rgba(255, 255, 255, " + (0.35 + 0.6 * p).toFixed(3) + ")"},
                            word));
    });
  });
};

inside.trace = function () {
  var inputId = mm.currentInput();
  if (!inputId) { mm.showError("choose an input first (Look inside)"); return; }
  mm.showError("");
  mm.job("trace", "/api/trace", {input: inputId}).then(function (job) {
    if (job.state !== "done") return;
    var result = job.result, rows = [];
    Object.keys(result.strongest).forEach(function (component) {
      result.strongest[component].forEach(function (s) {
        rows.push([component, s.group, s.layer === null ? "none" : "L" + s.layer, s.recovery]);
      });
    });
    mm.rows(mm.$("trace-table"), ["component", "group", "strongest layer", "recovery"], rows);
    mm.figures(mm.$("trace-figures"), result.figures, CAPTIONS);
    mm.$("trace-result").hidden = false;
  }).catch(mm.fail);
};

mm.$("trace").addEventListener("click", inside.trace);
mm.inputForm(inside.run);
