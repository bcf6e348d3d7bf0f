// Ask and explain: upload or pick an image, ask, then click answer tokens and methods.
// Heatmaps are drawn here from the API's patch grids: the image in grey, red for positive scores and blue for
// negative ones, opacity by |score| (as the report shades prompt words), so the reddest patch is the top-scored one.
"use strict";
var ask = {data: null, images: [], token: 0, method: null, input: null, request: null};
var MAX_ALPHA = 0.85, SIDE = 256;

ask.choices = function () {
  mm.api("/api/model").then(function (model) {
    var box = mm.$("method-choices");
    model.methods.forEach(function (name) {
      var label = mm.el("label");
      var box_ = mm.el("input", {type: "checkbox", value: name, "class": "method-choice"});
      box_.checked = ["attention", "rollout", "gradient_x_input"].indexOf(name) >= 0;
      label.appendChild(box_);
      label.appendChild(document.createTextNode(" " + name));
      box.appendChild(label);
      box.appendChild(document.createTextNode(" "));  // where a line may break: between labels, not inside one
    });
  }).catch(mm.fail);
};

// The request's body from the options; a typed value is sent as it is (0 too) so that the server refuses it by name.
ask.body = function (inputId) {
  var methods = Array.prototype.map.call(document.querySelectorAll(".method-choice:checked"),
                                         function (b) { return b.value; });
  var tokens = mm.$("tokens");
  if (tokens.validity.badInput) throw new Error("answer tokens: type a whole number from 1 to 16");
  var body = {input: inputId, methods: methods};
  if (tokens.value.trim() !== "") body.max_new_tokens = Number(tokens.value);
  return body;
};

ask.run = function (inputId) {
  var body = ask.body(inputId), cancel = mm.$("ask-cancel");
  ask.request = new AbortController();
  cancel.hidden = false;
  cancel.onclick = function () { ask.request.abort(); };
  return mm.post("/api/explain", body, ask.request.signal).then(function (data) {
    return ask.loadImages(inputId, data.layout.images.length).then(function (images) {
      ask.input = inputId;
      ask.data = data; ask.images = images; ask.token = 0; ask.method = Object.keys(data.methods)[0];
      ask.render();
    });
  }, function (error) {
    if (error.name !== "AbortError") throw error;
    // the page stops waiting; a job still waiting in the queue is dropped, one already running finishes
    throw new Error("cancelled: the page stopped waiting for the answer");
  }).finally(function () { cancel.hidden = true; });
};

// A new request makes the result on screen stale: dimmed and marked while it runs, hidden if it fails.
ask.stale = function () {
  mm.$("result").classList.add("stale");
  mm.$("stale-note").hidden = mm.$("result").hidden;
};

ask.failed = function () {
  mm.$("result").hidden = true;
  mm.$("stale-note").hidden = true;
};

ask.loadImages = function (inputId, count) {
  var loads = [];
  for (var i = 0; i < count; i++) {
    loads.push(new Promise(function (resolve, reject) {
      var image = new Image();
      image.onload = function () { resolve(image); };
      image.onerror = function () { reject(new Error("could not load the input image")); };
      image.src = "/api/inputs/" + inputId + "/image/" + i;
    }));
  }
  return Promise.all(loads);
};

// Every view of every image, in the layout's order: [image index, view index, view].
ask.views = function () {
  var out = [];
  ask.data.layout.images.forEach(function (image, i) {
    image.views.forEach(function (view, j) { out.push([i, j, view]); });
  });
  return out;
};

// "image 1 · tile view 2×8": which picture a heatmap or a patch belongs to (the image only when there are several).
ask.viewName = function (i, j) {
  var view = ask.data.layout.images[i].views[j];
  return (ask.data.layout.images.length > 1 ? "image " + (i + 1) + " · " : "") + view.kind + " view " +
    view.grid.join("×");
};

ask.render = function () {
  var data = ask.data;
  mm.$("result").hidden = false;
  mm.$("result").classList.remove("stale");
  mm.$("stale-note").hidden = true;
  if (ask.images.length) mm.$("original").src = ask.images[0].src;
  mm.$("original").hidden = !ask.images.length;
  var explained = mm.$("explained");
  explained.innerHTML = "";
  [["prompt", data.prompt]].concat(data.explained).forEach(function (line) {
    explained.appendChild(mm.el("dt", {}, line[0]));
    explained.appendChild(mm.el("dd", {}, line[1]));
  });
  var strip = mm.$("token-strip");
  strip.innerHTML = "";
  data.answer_tokens.forEach(function (token, t) {
    var button = mm.el("button", {"class": "tok", "data-t": t, type: "button"}, token);
    button.addEventListener("click", function () { ask.token = t; ask.show(); });
    strip.appendChild(button);
  });
  var methods = mm.$("method-strip");
  methods.innerHTML = "";
  Object.keys(data.methods).forEach(function (name) {
    var button = mm.el("button", {"class": "method", "data-m": name, type: "button"}, name);
    button.addEventListener("click", function () { ask.method = name; ask.show(); });
    methods.appendChild(button);
  });
  mm.$("share-definition").textContent = "Image share: " + data.image_share + ".";
  ask.show();
};

ask.show = function () {
  var data = ask.data, t = ask.token;
  document.querySelectorAll("#token-strip button").forEach(function (b) {
    b.classList.toggle("active", Number(b.dataset.t) === t);
  });
  document.querySelectorAll("#method-strip button").forEach(function (b) {
    b.classList.toggle("active", b.dataset.m === ask.method);
  });
  var box = mm.$("heatmaps"), views = ask.views(), several = views.length > 1;
  box.innerHTML = "";
  box.dataset.token = t;
  mm.$("legend").hidden = !views.length;
  Object.keys(data.methods).forEach(function (name) {
    if (!views.length) return;
    var target = data.methods[name].targets[t];
    var figure = mm.el("figure", {"data-m": name});
    var maps = mm.el("div", {"class": "views"});
    views.forEach(function (entry) {
      var i = entry[0], j = entry[1];
      var one = mm.el("div", {"class": "view"});
      var canvas = mm.el("canvas", {"data-m": name, "data-image": i, "data-view": j});
      ask.draw(canvas, target.grids[i][j], entry[2], ask.images[i]);
      canvas.addEventListener("mousemove", function (event) { ask.hover(event, canvas, name, target); });
      one.appendChild(canvas);
      if (several) one.appendChild(mm.el("div", {"class": "view-name"}, ask.viewName(i, j)));
      maps.appendChild(one);
    });
    figure.appendChild(maps);
    var share = target.image_share === null ? "" : " · image " + Math.round(100 * target.image_share) + "%";
    figure.appendChild(mm.el("figcaption", {}, name + share));
    box.appendChild(figure);
  });
  var chosen = data.methods[ask.method].targets[t];
  var words = mm.$("words");
  words.innerHTML = "";
  chosen.words.forEach(function (w) {
    words.appendChild(mm.el("span", {"class": w.kind, style: w.style, title: w.title}, w.text));
  });
  var top = chosen.top;
  mm.$("caption").textContent = ask.method + " · " + data.methods[ask.method].milliseconds + " ms" +
    (top ? " · strongest patch: " + ask.viewName(top.image, top.view) + ", row " + top.row + ", col " + top.col +
           " (position " + top.position + ")" : "");
};

// The scale of one heatmap: its largest |score|.
ask.scale = function (grid) {
  var most = 0;
  grid.forEach(function (row) { row.forEach(function (v) { if (v !== null) most = Math.max(most, Math.abs(v)); }); });
  return most;
};

// One view's heatmap over its image: the whole image in grey, the view's cells over the view's pixel box.
ask.draw = function (canvas, grid, view, image) {
  var zoom = SIDE / Math.max(image.width, image.height);
  canvas.width = Math.round(image.width * zoom);
  canvas.height = Math.round(image.height * zoom);
  var ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.filter = "grayscale(1)";
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  ctx.filter = "none";
  var scale = ask.scale(grid), box = view.box, rows = view.grid[0], cols = view.grid[1];
  var cellW = (box[2] - box[0]) / cols * zoom, cellH = (box[3] - box[1]) / rows * zoom;
  canvas.geometry = {x0: box[0] * zoom, y0: box[1] * zoom, w: cellW, h: cellH, rows: rows, cols: cols};
  if (scale <= 0) return;
  grid.forEach(function (row, r) {
    row.forEach(function (v, c) {
      if (v === null || v === 0) return;
      var colour = v > 0 ? "214, 39, 40" : "31, 119, 180";
      ctx.fillStyle = "rgba(" + colour + ", " + (MAX_ALPHA * Math.abs(v) / scale).toFixed(4) + ")";
      ctx.fillRect(box[0] * zoom + c * cellW, box[1] * zoom + r * cellH, cellW, cellH);
    });
  });
};

ask.hover = function (event, canvas, method, target) {
  var g = canvas.geometry, rect = canvas.getBoundingClientRect();
  var i = Number(canvas.dataset.image), j = Number(canvas.dataset.view);
  var c = Math.floor((event.clientX - rect.left - g.x0) / g.w), r = Math.floor((event.clientY - rect.top - g.y0) / g.h);
  if (r < 0 || c < 0 || r >= g.rows || c >= g.cols) return;
  var score = target.grids[i][j][r][c], position = ask.data.layout.positions[i][j][r][c];
  mm.$("patch").textContent = method + " · " + ask.viewName(i, j) + " · row " + r + ", col " + c + " · position " +
    position + " · score " + (score === null ? "–" : score.toPrecision(4));
};

ask.choices();
mm.inputForm(ask.run, {start: ask.stale, fail: ask.failed});
