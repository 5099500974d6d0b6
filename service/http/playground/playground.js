// diptych's playground: calls the service's own HTTP API (README, "HTTP API"); no framework.
// What every panel shares; each kind's panel (its section and script) comes from its wire
// (service/kinds/wire.py, `Panel`), and its model list from the `select[data-kind]` in it.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const models = {};  // kind -> its available model versions, for each panel's `select[data-kind]`
const onModels = [];  // panels' functions to call once the model lists are filled

function element(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function showKeyField() {
  $("#key-box").hidden = false;
}

// One API call: JSON in, JSON (or a Blob) out; a refusal throws the API's own `error`.
async function api(path, body) {
  const headers = body === undefined ? {} : {"Content-Type": "application/json"};
  const key = $("#key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, {method: body === undefined ? "GET" : "POST", headers,
                                      body: body === undefined ? undefined : JSON.stringify(body)});
  if (response.status === 401) {
    showKeyField();
    throw new Error(key ? "401: the API key was refused; check it above."
                        : "401: this server needs an API key; enter it above.");
  }
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    const detail = type.includes("json") ? (await response.json()).error : await response.text();
    throw new Error(`${response.status}: ${detail || response.statusText}`);
  }
  return type.includes("json") ? response.json() : response.blob();
}

// Runs `work` for a section, showing its failure in the section, never silently.
async function guarded(section, work) {
  const error = $(".error", section);
  error.textContent = "";
  section.classList.add("busy");
  try {
    await work();
  } catch (failure) {
    error.textContent = failure.message;
  } finally {
    section.classList.remove("busy");
  }
}

function selected(kind) {
  return models[kind].find((model) => `${model.name}:${model.version}` === $(`#${kind}`).value);
}

// A version's accuracy on the answers labelled through /feedback, when /models has it.
function labelledAccuracy(model) {
  const feedback = model.feedback;
  if (!feedback || typeof feedback.accuracy !== "number") return "";
  return ` - ${(feedback.accuracy * 100).toFixed(1)}% right of ${feedback.labelled} labelled`;
}

async function loadModels() {
  $("#status").textContent = "";
  try {
    const listing = await api("/models");
    for (const kind of Object.keys(models)) {
      models[kind] = listing.models.filter((model) => model.kind === kind && model.state === "available");
      $(`#${kind}`).replaceChildren(...models[kind].map((model) => element("option", {
        value: `${model.name}:${model.version}`,
        textContent: `${model.name}:${model.version}${model.labels.length ? ` (${model.labels.join(", ")})` : ""}` +
                     labelledAccuracy(model),
      })));
      // the highest version labelled "latest", else the last listed
      const latest = models[kind].findLast((model) => model.labels.includes("latest")) || models[kind].at(-1);
      if (latest) $(`#${kind}`).value = `${latest.name}:${latest.version}`;
    }
    onModels.forEach((changed) => changed());
  } catch (failure) {
    $("#status").textContent = `Models: ${failure.message}`;
  }
}

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

// After the panels' scripts (which follow this one) have set themselves up.
document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("select[data-kind]")) models[select.dataset.kind] = [];
  $("#key").addEventListener("change", loadModels);
  loadModels();
});
