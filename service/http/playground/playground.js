// diptych's playground: calls the service's own HTTP API (README, "HTTP API"); no framework.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const STEPS = 16;  // frames in an interpolation strip: the slider's positions
const models = {classifier: [], generator: []};
let strip = null;  // the last interpolation strip, an Image

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

async function loadModels() {
  $("#status").textContent = "";
  try {
    const listing = await api("/models");
    for (const kind of Object.keys(models)) {
      models[kind] = listing.models.filter((model) => model.kind === kind && model.state === "available");
      $(`#${kind}`).replaceChildren(...models[kind].map((model) => element("option", {
        value: `${model.name}:${model.version}`,
        textContent: `${model.name}:${model.version}${model.labels.length ? ` (${model.labels.join(", ")})` : ""}`,
      })));
      // the highest version labelled "latest", else the last listed
      const latest = models[kind].findLast((model) => model.labels.includes("latest")) || models[kind].at(-1);
      if (latest) $(`#${kind}`).value = `${latest.name}:${latest.version}`;
    }
    generatorChanged();
  } catch (failure) {
    $("#status").textContent = `Models: ${failure.message}`;
  }
}

function generatorChanged() {
  const card = selected("generator")?.card || {};
  const classes = card.classes || [];
  $("#class").replaceChildren(
    element("option", {value: "", textContent: classes.length ? "(each in turn)" : "(unconditional)"}),
    ...classes.map((name) => element("option", {value: name, textContent: name})));
  if (classes.length) $("#class").value = classes[0];
  if (card.truncation_psi) $("#psi").value = card.truncation_psi;
  $("#psi-value").value = Number($("#psi").value).toFixed(2);
}

// The fields /generate and /interpolate share.
function generation() {
  const body = {model: $("#generator").value || undefined, psi: Number($("#psi").value)};
  if ($("#class").value) body.class = $("#class").value;
  return body;
}

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

function classify(file) {
  const section = $("#classify");
  return guarded(section, async () => {
    $("#preview").src = URL.createObjectURL(file);
    $("#preview").hidden = false;
    $("#bars").replaceChildren();
    const result = await api("/classify", {images: [await readBase64(file)], top_k: 5,
                                           model: $("#classifier").value || undefined});
    $("#bars").replaceChildren(...result.predictions[0].map(({label, score}) => element("li", {},
      element("span", {className: "label", textContent: label}),
      element("span", {className: "bar", style: `width: ${(score * 100).toFixed(1)}%`}),
      element("span", {className: "score", textContent: `${(score * 100).toFixed(1)}%`}))));
  });
}

function generate() {
  return guarded($("#generate"), async () => {
    const result = await api("/generate", {...generation(), count: Number($("#count").value),
                                           seed: Number($("#seed").value), format: "json"});
    $("#grid").replaceChildren(...result.images.map((image) => element("figure", {},
      element("img", {src: `data:image/png;base64,${image.png}`, alt: image.class ?? ""}),
      element("figcaption", {textContent: image.class ?? ""}))));
  });
}

function interpolate() {
  return guarded($("#interpolate"), async () => {
    const blob = await api("/interpolate", {...generation(), steps: STEPS,
                                            seeds: [Number($("#seed-a").value), Number($("#seed-b").value)]});
    const image = new Image();
    image.src = URL.createObjectURL(blob);
    await image.decode();
    strip = image;
    $("#slider").disabled = false;
    showFrame();
  });
}

// Draws the strip's frame under the slider.
function showFrame() {
  if (!strip) return;
  const canvas = $("#frame");
  const context = canvas.getContext("2d");
  const width = strip.naturalWidth / STEPS;
  context.imageSmoothingEnabled = false;
  context.drawImage(strip, Number($("#slider").value) * width, 0, width, strip.naturalHeight,
                    0, 0, canvas.width, canvas.height);
}

function setUp() {
  const drop = $("#drop");
  $("#image").addEventListener("change", (event) => event.target.files[0] && classify(event.target.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) classify(event.dataTransfer.files[0]);
  });
  $("#generator").addEventListener("change", generatorChanged);
  $("#psi").addEventListener("input", () => { $("#psi-value").value = Number($("#psi").value).toFixed(2); });
  $("#go-generate").addEventListener("click", generate);
  $("#go-interpolate").addEventListener("click", interpolate);
  $("#slider").max = STEPS - 1;
  $("#slider").addEventListener("input", showFrame);
  $("#key").addEventListener("change", loadModels);
  loadModels();
}

setUp();
