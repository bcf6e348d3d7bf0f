// Look inside: the logit lens (a word grid per layer and view over the image), attention flow, knockout; causal
// tracing of the form's input on request, as a background job whose progress is polled.
"use strict";
var inside = {lens: null};
var CELL = 40;  // px: a word grid cell's shorter side, room for a short word
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

// One layer's word grids, one per view of each image: the whole image behind, the view's cells laid over the
// view's pixel box (as /ask lays its heatmaps), each cell labelled with its top-1 word.
inside.grid = function (layer) {
  var holder = mm.$("word-grid"), lens = inside.lens, entry = lens.grid[layer];
  holder.innerHTML = "";
  mm.$("layer-name").textContent = lens.layers[layer] ? lens.layers[layer].layer : "";
  if (!entry) return;
  var room = Math.max(200, holder.parentNode.clientWidth - 48);
  entry.views.forEach(function (one) {
    var image = lens.images[one.image], view = image.views[one.view];
    var height = image.size[0], width = image.size[1], box = view.box, rows = view.grid[0], cols = view.grid[1];
    // a cell's shorter side about CELL px (a word fits), the whole image within the card
    var cell = Math.min((box[2] - box[0]) / cols, (box[3] - box[1]) / rows);
    var zoom = Math.min(CELL / cell, room / width);
    var stage = mm.el("div", {"class": "stage", "data-image": one.image, "data-view": one.view});
    stage.style.width = Math.round(width * zoom) + "px";
    stage.style.height = Math.round(height * zoom) + "px";
    stage.style.backgroundImage = "url(/api/inputs/" + inside.input + "/image/" + one.image + ")";
    var cells = mm.el("div", {"class": "cells"});
    cells.style.left = box[0] * zoom + "px";
    cells.style.top = box[1] * zoom + "px";
    cells.style.width = (box[2] - box[0]) * zoom + "px";
    cells.style.height = (box[3] - box[1]) * zoom + "px";
    cells.style.gridTemplateColumns = "repeat(" + cols + ", 1fr)";
    cells.style.gridTemplateRows = "repeat(" + rows + ", 1fr)";
    one.words.forEach(function (row, r) {
      row.forEach(function (word, c) {
        var p = one.probs[r][c] || 0;
        cells.appendChild(mm.el("span", {title: "row " + r + ", col " + c + ": " + word + " (p " + p + ")",
                                         style: "background: rgba(255, 255, 255, " + (0.35 + 0.6 * p).toFixed(3) + ")"},
                                word));
      });
    });
    stage.appendChild(cells);
    var figure = mm.el("figure");
    figure.appendChild(stage);
    figure.appendChild(mm.el("figcaption", {}, (lens.images.length > 1 ? "image " + (one.image + 1) + " · " : "") +
      view.kind + " view " + rows + "×" + cols + " · box " + box.join(", ")));
    holder.appendChild(figure);
  });
};

// Causal tracing of exactly what the form shows: the input is made from the form first, and the result shows it.
inside.trace = function () {
  var button = mm.$("trace");
  mm.showError("");
  mm.$("trace-result").hidden = true;
  button.disabled = true;  // one trace at a time from this page: a second click would start a second job
  mm.$("trace-state").textContent = "preparing the input…";
  var given = null;
  mm.createInput().then(function (input) {
    given = input;
    return mm.job("trace", "/api/trace", {input: input.id});
  }).then(function (job) {
    if (job.state !== "done") return;
    var result = job.result, rows = [];
    Object.keys(result.strongest).forEach(function (component) {
      result.strongest[component].forEach(function (s) {
        rows.push([component, s.group, s.layer === null ? "none" : "L" + s.layer, s.recovery]);
      });
    });
    inside.traced(given, result);
    mm.rows(mm.$("trace-table"), ["component", "group", "strongest layer", "recovery"], rows);
    mm.figures(mm.$("trace-figures"), result.figures, CAPTIONS);
    mm.$("trace-result").hidden = false;
  }).catch(function (error) {
    mm.$("trace-state").textContent = "";
    mm.showError(error.message);
  }).finally(function () { button.disabled = false; });
};

// What was traced: the image, the prompt, the answer and how much the corruption moved it.
inside.traced = function (given, result) {
  var image = mm.$("trace-image");
  image.hidden = !given.images.length;
  if (given.images.length) image.src = given.images[0].url;
  var row = result.rows[0], facts = mm.$("trace-input");
  facts.innerHTML = "";
  [["prompt", given.prompt], ["answer", result.answer],
   ["P(answer)", row.p_clean.toFixed(4) + " clean → " + row.p_corrupt.toFixed(4) + " corrupted (" +
                 inside.corruption(result.corruption) + ")"]].concat(result.warning ? [["warning", result.warning]] : [])
    .forEach(function (line) {
      facts.appendChild(mm.el("dt", {}, line[0]));
      facts.appendChild(mm.el("dd", {}, line[1]));
    });
};

// "noise on pixels, ×3": how the image was corrupted, in words.
inside.corruption = function (c) {
  return c.kind + (c.on ? " on " + c.on : "") + (c.noise ? ", " + c.noise + "× the std" : "");
};

mm.$("trace").addEventListener("click", inside.trace);
mm.inputForm(inside.run);
