// What every page shares: API calls with one-line errors, and the input form (the current input id is kept
// in sessionStorage, so that every page of this tab looks at the same input).
"use strict";
var mm = {};

mm.$ = function (id) { return document.getElementById(id); };

mm.el = function (tag, attrs, text) {
  var node = document.createElement(tag);
  Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
  if (text !== undefined) node.textContent = text;
  return node;
};

mm.showError = function (message) {
  var box = mm.$("error");
  box.textContent = message || "";
  box.hidden = !message;
};

// fetch JSON from the API; a refusal (4xx) or a failure shows its one-line message and rejects
mm.api = function (path, options) {
  return fetch(path, options).then(function (response) {
    return response.json().catch(function () { return {}; }).then(function (body) {
      if (!response.ok) throw new Error((mm.problem(body.detail) || response.statusText) + " (" + response.status + ")");
      return body;
    });
  });
};

// The form's words for the API's fields: a validation error (FastAPI's 422 list) names what the user typed into.
mm.FIELDS = {max_new_tokens: "answer tokens", methods: "methods", box: "box", samples: "samples per type",
             ratio: "ratio", noise: "noise", target: "target", foil: "foil", source: "source", keep: "keep",
             top_k: "top words", index: "neuron index", site: "neuron site", top: "top images", input: "input"};

// One line for a refusal: a string as it is; a validation list as "field: what was wrong (got value)" each.
mm.problem = function (detail) {
  if (!Array.isArray(detail)) return detail;
  return detail.map(function (d) {
    var loc = (d.loc || []).filter(function (part) { return part !== "body"; });
    var field = loc.length ? (mm.FIELDS[loc[0]] || String(loc[0])) : "request";
    var msg = String(d.msg || "not valid").replace(/^Value error, /, "");
    var got = d.input === undefined || d.input === null || typeof d.input === "object" ? "" :
      " (got " + JSON.stringify(d.input) + ")";
    return field + ": " + msg.charAt(0).toLowerCase() + msg.slice(1) + got;
  }).join("; ");
};

mm.post = function (path, body, signal) {
  return mm.api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
                       signal: signal});
};

// The busy line reads "<what>… N s", counted every second, so that a long run shows it is alive (a page may
// change `mm.busyWhat` on the way: "waiting", "running"); the primary buttons are disabled meanwhile.
mm.busy = function (on, what) {
  var busy = mm.$("busy");
  clearInterval(mm.busyTimer);
  document.querySelectorAll("button.primary").forEach(function (b) { b.disabled = on; });
  if (!busy) return;
  busy.hidden = !on;
  if (!on) return;
  var start = Date.now();
  mm.busyWhat = what || "working";
  mm.busyTick = function () { busy.textContent = mm.busyWhat + "… " + Math.floor((Date.now() - start) / 1000) + " s"; };
  mm.busyTick();
  mm.busyTimer = setInterval(mm.busyTick, 1000);
};

mm.fail = function (error) { mm.busy(false); mm.showError(error.message); };

mm.rows = function (table, header, rows) {
  table.innerHTML = "";
  var head = table.insertRow();
  header.forEach(function (h) { head.appendChild(mm.el("th", {}, h)); });
  rows.forEach(function (row) {
    var tr = table.insertRow();
    row.forEach(function (cell) {
      var td = tr.insertCell();
      td.textContent = cell === null || cell === undefined ? "–" : cell;
      if (typeof cell === "number") td.className = "num";
    });
  });
};

mm.figures = function (box, figures, captions) {
  box.innerHTML = "";
  Object.keys(figures).forEach(function (name) {
    var figure = mm.el("figure");
    figure.appendChild(mm.el("img", {src: figures[name], alt: name}));
    figure.appendChild(mm.el("figcaption", {}, captions[name] || name));
    box.appendChild(figure);
  });
};

// The input the form shows, made on the server (POST /api/inputs): resolves with its answer (id, prompt, images).
// Refused here, before any upload: "upload my own…" with no file for a prompt with an <image> slot, and an
// uploaded image with no prompt (the server refuses it too).
mm.createInput = function () {
  var select = mm.$("example"), prompt = mm.$("prompt").value, file = mm.$("upload").files[0];
  if (!select.value && !file && prompt.indexOf("<image>") >= 0) {
    return Promise.reject(new Error("choose an image file (or pick an example)"));
  }
  if (!select.value && file && !prompt.trim()) {
    return Promise.reject(new Error("type a prompt: a question about the uploaded image"));
  }
  var data = new FormData();
  if (select.value) data.append("example", select.value);
  else if (file) data.append("image", file);
  if (prompt) data.append("prompt", prompt);
  return mm.api("/api/inputs", {method: "POST", body: data}).then(function (input) {
    sessionStorage.setItem("mmlens-input", input.id);
    return input;
  });
};

// The input form: fill the example list; on submit, create the input and hand its id (and the input) to `then`.
// `hooks.start()` runs as a submit starts, `hooks.fail(error)` when it fails (the page marks its old result).
mm.inputForm = function (then, hooks) {
  var form = mm.$("input-form");
  if (!form) return;
  hooks = hooks || {};
  var select = mm.$("example"), prompt = mm.$("prompt"), upload = mm.$("upload");
  mm.api("/api/examples").then(function (examples) {
    examples.forEach(function (e) { select.appendChild(mm.el("option", {value: e.name}, e.name)); });
    if (examples.length) { select.value = examples[0].name; prompt.value = examples[0].prompt; }
    select.addEventListener("change", function () {
      var chosen = examples.filter(function (e) { return e.name === select.value; })[0];
      if (chosen) { prompt.value = chosen.prompt; upload.value = ""; }  // the form shows one image, never two
    });
  }).catch(mm.fail);
  upload.addEventListener("change", function () { select.value = ""; });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    mm.showError("");
    if (hooks.start) hooks.start();
    mm.busy(true);
    mm.createInput().then(function (input) { return then(input.id, input); })
      .then(function () { mm.busy(false); }, function (error) {
        if (hooks.fail) hooks.fail(error);
        mm.fail(error);
      });
  });
};

mm.currentInput = function () { return sessionStorage.getItem("mmlens-input"); };

// Poll a background job every 300 ms until it ends; `onProgress(job)` sees each state. Resolves with the job.
mm.poll = function (jobId, onProgress) {
  return new Promise(function (resolve, reject) {
    function step() {
      mm.api("/api/jobs/" + jobId).then(function (job) {
        if (onProgress) onProgress(job);
        if (job.state === "waiting" || job.state === "running") { mm.pollTimer = setTimeout(step, 300); return; }
        if (job.state === "failed") { reject(new Error(job.error)); return; }
        resolve(job);
      }, reject);
    }
    step();
  });
};

// Start a background job (POST `path` with `body`) and follow it: the progress bar `#<name>-progress`, the state
// line `#<name>-state` and the Cancel button `#<name>-cancel` (DELETE; the poll then sees "cancelled").
// Resolves with the ended job; rejects with a failed job's one-line error.
mm.job = function (name, path, body) {
  var bar = mm.$(name + "-progress"), cancel = mm.$(name + "-cancel");
  return mm.post(path, body).then(function (started) {
    bar.hidden = false;
    cancel.hidden = false;
    cancel.onclick = function () { mm.api("/api/jobs/" + started.id, {method: "DELETE"}).catch(mm.fail); };
    return mm.poll(started.id, function (job) {
      bar.max = Math.max(1, job.total);
      bar.value = job.done;
      mm.$(name + "-state").textContent = job.state + (job.total ? " · " + job.done + " / " + job.total : "");
    });
  }).then(function (job) {
    cancel.hidden = true;
    return job;
  }, function (error) {
    cancel.hidden = true;
    throw error;
  });
};
