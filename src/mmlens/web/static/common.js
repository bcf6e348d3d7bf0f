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
      if (!response.ok) {
        var detail = body.detail;
        if (Array.isArray(detail)) detail = detail.map(function (d) { return d.msg; }).join("; ");
        throw new Error((detail || response.statusText) + " (" + response.status + ")");
      }
      return body;
    });
  });
};

mm.post = function (path, body) {
  return mm.api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
};

mm.busy = function (on) {
  var busy = mm.$("busy");
  if (busy) busy.hidden = !on;
  document.querySelectorAll("button.primary").forEach(function (b) { b.disabled = on; });
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

// The input form: fill the example list; on submit, create the input and hand its id to `then`.
mm.inputForm = function (then) {
  var form = mm.$("input-form");
  if (!form) return;
  var select = mm.$("example"), prompt = mm.$("prompt");
  mm.api("/api/examples").then(function (examples) {
    examples.forEach(function (e) { select.appendChild(mm.el("option", {value: e.name}, e.name)); });
    if (examples.length) { select.value = examples[0].name; prompt.value = examples[0].prompt; }
    select.addEventListener("change", function () {
      var chosen = examples.filter(function (e) { return e.name === select.value; })[0];
      if (chosen) prompt.value = chosen.prompt;
    });
  }).catch(mm.fail);
  mm.$("upload").addEventListener("change", function () { select.value = ""; });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    mm.showError("");
    mm.busy(true);
    var data = new FormData();
    var file = mm.$("upload").files[0];
    if (select.value) data.append("example", select.value);
    else if (file) data.append("image", file);
    if (prompt.value) data.append("prompt", prompt.value);
    mm.api("/api/inputs", {method: "POST", body: data}).then(function (input) {
      sessionStorage.setItem("mmlens-input", input.id);
      return then(input.id);
    }).then(function () { mm.busy(false); }, mm.fail);
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
