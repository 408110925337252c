"""The one web page ``transferkit serve`` shows at ``/``: choose or drop an image, see the top-5.

Self-contained on purpose (inline CSS and JS, no CDN, no build step): it works on a machine
without internet, and the server's Content-Security-Policy forbids loading anything else.
It learns the model's name and classes from /metadata, so the HTML itself is a constant.
Element ids (``file``, ``preview``, ``results``, ``top-label``, ``status``) are what tests read.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>transferkit</title>
<style>
  :root { --accent: #2f6fdf; --muted: #667; --line: #dde; }
  * { box-sizing: border-box; }
  body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #223; background: #f6f7fb; }
  main { max-width: 760px; margin: 2rem auto; padding: 0 1rem; }
  h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
  #about { color: var(--muted); margin: 0 0 1.2rem; font-size: .9rem; }
  #drop { display: block; border: 2px dashed var(--line); border-radius: 10px; background: #fff; padding: 1.4rem;
          text-align: center; cursor: pointer; transition: border-color .15s, background .15s; }
  #drop.over { border-color: var(--accent); background: #eef3fd; }
  #drop input { display: none; }
  #drop strong { color: var(--accent); }
  .grid { display: grid; grid-template-columns: 220px 1fr; gap: 1.2rem; margin-top: 1.2rem; align-items: start; }
  #preview { width: 220px; height: 220px; object-fit: contain; background: #fff; border: 1px solid var(--line);
             border-radius: 8px; }
  #preview:not([src]) { visibility: hidden; }
  #top-label { font-size: 1.25rem; font-weight: 600; min-height: 1.8rem; margin-bottom: .4rem; }
  .row { display: grid; grid-template-columns: 9rem 1fr 4rem; gap: .5rem; align-items: center; margin: .35rem 0; }
  .row .label { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  .bar { height: 14px; background: #e6e8f0; border-radius: 7px; overflow: hidden; }
  .bar span { display: block; height: 100%; background: var(--accent); border-radius: 7px; }
  .row:not(:first-child) .bar span { background: #8aa8e6; }
  .pct { text-align: right; font-variant-numeric: tabular-nums; color: var(--muted); }
  #status { color: var(--muted); font-size: .9rem; min-height: 1.3rem; margin-top: .6rem; }
  #status.error { color: #b3261e; }
  @media (max-width: 560px) { .grid { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<main>
  <h1 id="title">transferkit</h1>
  <p id="about">loading model information&hellip;</p>
  <label id="drop" for="file">
    <input id="file" type="file" accept="image/*">
    <strong>Choose an image</strong> or drop one here
  </label>
  <div class="grid">
    <img id="preview" alt="the image being classified">
    <section>
      <div id="top-label" aria-live="polite"></div>
      <div id="results"></div>
      <div id="status" role="status"></div>
    </section>
  </div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let shownUrl = null;

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function render(predictions) {
  const results = $("results");
  results.replaceChildren();
  $("top-label").textContent = predictions.length ? predictions[0].label : "";
  for (const p of predictions) {
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;          // textContent: class names are never parsed as HTML
    label.title = p.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * p.prob).toFixed(1) + "%";
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = (100 * p.prob).toFixed(1) + "%";
    row.append(label, bar, pct);
    results.append(row);
  }
}

async function classify(file) {
  if (!file) return;
  if (shownUrl) URL.revokeObjectURL(shownUrl);
  shownUrl = URL.createObjectURL(file);
  $("preview").src = shownUrl;
  $("top-label").textContent = "";
  $("results").replaceChildren();
  status("classifying " + file.name + "\\u2026", false);
  const body = new FormData();
  body.append("file", file);
  try {
    const response = await fetch("predict?topk=5", { method: "POST", body });
    const data = await response.json().catch(() => ({ error: "HTTP " + response.status }));
    if (!response.ok) { status(data.error || ("HTTP " + response.status), true); return; }
    render(data.predictions);
    status(data.model + " \\u00b7 " + data.ms + " ms", false);
  } catch (err) {
    status("the server did not answer: " + err, true);
  }
}

$("file").addEventListener("change", (e) => classify(e.target.files[0]));
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => { e.preventDefault(); classify(e.dataTransfer.files[0]); });

fetch("metadata").then((r) => r.json()).then((m) => {
  $("title").textContent = m.run + " \\u2014 " + m.model;
  document.title = m.run + " \\u00b7 transferkit";
  const top1 = m.metrics && typeof m.metrics.top1 === "number" ? ", test top-1 " + (100 * m.metrics.top1).toFixed(1) + "%" : "";
  $("about").textContent = m.num_classes + " classes (" + m.classes.slice(0, 6).join(", ") +
    (m.num_classes > 6 ? ", \\u2026" : "") + "), " + m.preprocess.size + " px input" + top1 + ", " + m.backend + " backend";
}).catch(() => { $("about").textContent = ""; });
</script>
</body>
</html>
"""


def page_html() -> str:
    return PAGE
