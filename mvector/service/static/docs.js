// The API reference page: renders /openapi.json with plain DOM calls (no third-party code, no innerHTML of
// server text), so it works offline and under the page's content security policy.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function resolve(spec, schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return (spec.components && spec.components.schemas && spec.components.schemas[name]) || schema;
  }
  return schema || {};
}

function schemaText(spec, schema) {
  return JSON.stringify(resolve(spec, schema), null, 2);
}

function operation(spec, path, method, op) {
  const box = el("section", { class: "op" });
  box.append(el("h3", {}, el("span", { class: "method " + method }, method.toUpperCase()), " " + path));
  if (op.summary) box.append(el("p", {}, op.summary));
  if (op.description) box.append(el("p", {}, op.description));
  const params = op.parameters || [];
  if (params.length) {
    const table = el("table", {}, el("tr", {}, el("th", {}, "parameter"), el("th", {}, "in"), el("th", {}, "rule")));
    for (const p of params) {
      const s = resolve(spec, p.schema);
      const rule = [s.type, s.pattern ? "pattern " + s.pattern : null, s.enum ? "one of " + s.enum.join(", ") : null,
        s.minimum !== undefined ? "≥ " + s.minimum : null, s.maximum !== undefined ? "≤ " + s.maximum : null,
        p.description || s.description].filter(Boolean).join("; ");
      table.append(el("tr", {}, el("td", {}, p.name + (p.required ? " *" : "")), el("td", {}, p.in), el("td", {}, rule)));
    }
    box.append(table);
  }
  if (op.requestBody && op.requestBody.content) {
    for (const [type, media] of Object.entries(op.requestBody.content)) {
      box.append(el("p", {}, "body: " + type));
      box.append(el("pre", { class: "schema" }, schemaText(spec, media.schema)));
    }
  }
  const answers = el("table", {}, el("tr", {}, el("th", {}, "status"), el("th", {}, "meaning")));
  for (const [status, r] of Object.entries(op.responses || {})) {
    answers.append(el("tr", {}, el("td", {}, status), el("td", {}, r.description || "")));
  }
  box.append(answers);
  return box;
}

async function main() {
  const root = document.getElementById("api");
  const status = document.getElementById("status");
  try {
    const resp = await fetch("/openapi.json");
    const spec = await resp.json();
    status.remove();
    root.append(el("p", {}, (spec.info && spec.info.description) || ""));
    for (const [path, ops] of Object.entries(spec.paths || {})) {
      for (const [method, op] of Object.entries(ops)) root.append(operation(spec, path, method, op));
    }
  } catch (err) {
    status.textContent = "could not read /openapi.json: " + err;
  }
}

main();
