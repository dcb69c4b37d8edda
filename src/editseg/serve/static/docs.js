// Renders /openapi.json as a plain list of endpoints, parameters and answers (works offline).
"use strict";
const esc = (t) => String(t ?? "").replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" }[c]));

function formFields(spec, op) {
  const content = op.requestBody && op.requestBody.content;
  if (!content) return [];
  const media = content["multipart/form-data"] || content["application/x-www-form-urlencoded"] || Object.values(content)[0];
  let schema = media.schema || {};
  if (schema.$ref) schema = spec.components.schemas[schema.$ref.split("/").pop()];
  const required = new Set(schema.required || []);
  return Object.entries(schema.properties || {}).map(([name, p]) => {
    const type = p.type || (p.anyOf || []).map((a) => a.format === "binary" ? "file" : a.type).filter((t) => t && t !== "null").join(" | ");
    return [name, p.format === "binary" ? "file" : type, required.has(name) ? "required" : `default: ${JSON.stringify(p.default ?? null)}`, p.description || ""];
  });
}

(async () => {
  const spec = await (await fetch("/openapi.json")).json();
  let html = `<p>${esc(spec.info.description)}</p>`;
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      html += `<h3><code>${method.toUpperCase()} ${esc(path)}</code> — ${esc(op.summary)}</h3>`;
      const params = (op.parameters || []).map((p) => [p.name, `${p.in}`, p.required ? "required" : "", (p.schema && p.schema.description) || p.description || ""]);
      const rows = params.concat(formFields(spec, op));
      if (rows.length) html += "<table><tr><th>field</th><th>type</th><th></th><th>meaning</th></tr>" +
        rows.map((r) => `<tr>${r.map((c) => `<td>${esc(c)}</td>`).join("")}</tr>`).join("") + "</table>";
      html += "<table><tr><th>status</th><th>meaning</th></tr>" +
        Object.entries(op.responses).map(([code, r]) => `<tr><td>${code}</td><td>${esc(r.description)}</td></tr>`).join("") + "</table>";
    }
  }
  document.getElementById("endpoints").innerHTML = html;
})();
