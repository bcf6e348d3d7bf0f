// Model: the family, layers and sites; the token layout of the current input, position by position.
"use strict";
mm.api("/api/model").then(function (model) {
  var facts = mm.$("facts");
  [["model", model.model], ["family", model.family], ["class", model["class"]], ["layers", model.layers],
   ["vision layers", model.vision_layers]].forEach(function (f) {
    facts.appendChild(mm.el("dt", {}, f[0]));
    facts.appendChild(mm.el("dd", {}, String(f[1])));
  });
  mm.$("site-count").textContent = model.sites.length + " sites";
  mm.$("sites").textContent = model.sites.join("\n");
  mm.$("sites").style.whiteSpace = "pre";
}).catch(mm.fail);

function showLayout(inputId) {
  return mm.api("/api/inputs/" + inputId + "/layout").then(function (layout) {
    mm.$("layout").hidden = false;
    var counts = layout.layout.tokens;
    mm.$("layout-summary").textContent = "· " + layout.layout.seq_len + " tokens: " +
      Object.keys(counts).map(function (k) { return counts[k] + " " + k; }).join(", ");
    var box = mm.$("positions");
    box.innerHTML = "";
    layout.positions.forEach(function (p) {
      var where = p.modality === "image" ? "image " + p.image + " · " + p.kind + " " + p.view + " · row " + p.row +
        ", col " + p.col : p.modality;
      var span = mm.el("span", {"class": p.modality, title: "position " + p.position + " · " + where},
                       p.modality === "image" ? "▦" : p.token);
      span.addEventListener("mouseenter", function () {
        mm.$("position").textContent = "position " + p.position + " · " + JSON.stringify(p.token) + " · " + where;
      });
      box.appendChild(span);
    });
    var rows = [];
    layout.layout.images.forEach(function (image, i) {
      image.views.forEach(function (v, j) {
        rows.push([i, image.size.join("×"), j, v.kind, v.grid.join("×"), v.box.join(", "), v.tokens]);
      });
    });
    mm.rows(mm.$("views"), ["image", "size (h×w)", "view", "kind", "grid", "box (x0, y0, x1, y1)", "tokens"], rows);
  });
}

mm.inputForm(showLayout);
if (mm.currentInput()) showLayout(mm.currentInput()).catch(function () { sessionStorage.removeItem("mmlens-input"); });
