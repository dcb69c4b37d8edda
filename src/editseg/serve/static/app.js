// editseg page: pick or upload an image, send expressions to /api/segment, show and offer results.
"use strict";
const $ = (sel) => document.querySelector(sel);
const state = { example: null, file: null, imageName: "image", switches: true };

function setStatus(text, isError) {
  const el = $("#status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

function showPreview(url) {
  const img = $("#preview");
  img.onload = () => { img.style.imageRendering = img.naturalWidth < 192 ? "pixelated" : "auto"; };
  img.src = url;
  img.hidden = false;
}

async function loadHealth() {
  try {
    const health = await (await fetch("/api/health")).json();
    $("#model").textContent = `model: ${health.model}, method: ${health.method}` + (health.device ? ` on ${health.device}` : "");
    state.switches = health.method === "early-grounding";
    $("#switches").hidden = !state.switches;
    const s = health.settings || {};
    for (const name of ["mode", "tau", "map_threshold", "prompt_tokens", "seed"]) {
      const field = $(`#form [name=${name}]`);
      if (field && s[name] !== undefined) field.value = s[name];
    }
    if (typeof s.attention_blocks === "string") $("#form [name=attention_blocks]").value = s.attention_blocks;
    if (["remove", "refined"].includes(s.instruction_template)) $("#form [name=template]").value = s.instruction_template;
  } catch (err) {
    $("#model").textContent = "server unreachable";
  }
}

async function loadExamples() {
  const list = await (await fetch("/api/examples")).json();
  const box = $("#examples");
  for (const ex of list) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = ex.expressions.join("\n");
    button.dataset.example = ex.id;
    button.innerHTML = `<img src="${ex.url}" alt="${ex.id}">`;
    button.addEventListener("click", () => {
      state.example = ex.id; state.file = null; state.imageName = ex.id;
      $("#image-file").value = "";
      document.querySelectorAll(".examples button").forEach((b) => b.classList.toggle("selected", b === button));
      showPreview(ex.url);
      $("#expressions").value = ex.expressions.join("\n");
    });
    box.appendChild(button);
  }
}

$("#image-file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (!file) return;
  state.file = file; state.example = null;
  state.imageName = file.name.replace(/\.[^.]*$/, "") || "image";
  document.querySelectorAll(".examples button").forEach((b) => b.classList.remove("selected"));
  showPreview(URL.createObjectURL(file));
});

function slug(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 40) || "expression";
}

function figure(title, src, cls) {
  return `<figure><img class="${cls}" src="${src}" alt="${title}"><figcaption>${title}</figcaption></figure>`;
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function renderResults(data) {
  const box = $("#results");
  box.innerHTML = "";
  data.results.forEach((r, i) => {
    const card = document.createElement("article");
    card.className = "result";
    const maps = r.heatmaps_png || {};
    const record = {
      image: data.image, model: data.model, expression: r.expression, instruction: r.instruction,
      mask_rle: r.mask_rle, mask_area: r.mask_area, box: r.box, size: r.size, timings: r.timings,
    };
    const json = URL.createObjectURL(new Blob([JSON.stringify(record, null, 2)], { type: "application/json" }));
    const stem = `${state.imageName}-${String(i).padStart(2, "0")}-${slug(r.expression)}`;
    card.innerHTML =
      `<h3>${escapeHtml(r.expression)} <span class="muted small">→ “${escapeHtml(r.instruction)}”, ${r.mask_area} px</span></h3>` +
      `<div class="views">` +
      figure("overlay", r.overlay_png, "overlay") +
      Object.entries(maps).map(([name, src]) => figure(name.toUpperCase(), src, `map-${name}`)).join("") +
      figure("mask", r.mask_png, "mask") +
      `</div><div class="downloads">` +
      `<a class="download-mask" href="${r.mask_png}" download="${stem}.mask.png">mask PNG</a>` +
      `<a class="download-json" href="${json}" download="${stem}.json">JSON (COCO RLE)</a></div>`;
    card.querySelectorAll("img").forEach((img) => {
      img.onload = () => { img.style.imageRendering = img.naturalWidth < 160 ? "pixelated" : "auto"; };
    });
    box.appendChild(card);
  });
}

$("#form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!state.file && !state.example) { setStatus("Upload an image or pick a scene first.", true); return; }
  const expressions = $("#expressions").value.trim();
  if (!expressions) { setStatus("Type at least one expression.", true); return; }
  const body = new FormData();
  if (state.file) body.append("image", state.file); else body.append("example", state.example);
  body.append("expressions", expressions);
  body.append("outputs", "rle,mask_png,overlay_png,heatmaps_png");
  if (state.switches) for (const field of document.querySelectorAll("#switches [name]")) body.append(field.name, field.value);
  $("#run").disabled = true;
  setStatus("segmenting…");
  const started = performance.now();
  try {
    const response = await fetch("/api/segment", { method: "POST", body });
    const data = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) { setStatus(`${response.status}: ${data.detail}`, true); return; }
    renderResults(data);
    setStatus(`${data.results.length} result(s) in ${Math.round(performance.now() - started)} ms ` +
              `(model ${Math.round(1000 * data.timings.model_s)} ms)`);
  } catch (err) {
    setStatus(`request failed: ${err}`, true);
  } finally {
    $("#run").disabled = false;
  }
});

loadHealth();
loadExamples();
