// The generator's playground panels: a grid of images (POST /generate) and a walk between
// two seeds (POST /interpolate), shown frame by frame under a slider.
"use strict";

const STEPS = 16;  // frames in an interpolation strip: the slider's positions
let strip = null;  // the last interpolation strip, an Image

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

(() => {
  $("#generator").addEventListener("change", generatorChanged);
  $("#psi").addEventListener("input", () => { $("#psi-value").value = Number($("#psi").value).toFixed(2); });
  $("#go-generate").addEventListener("click", generate);
  $("#go-interpolate").addEventListener("click", interpolate);
  $("#slider").max = STEPS - 1;
  $("#slider").addEventListener("input", showFrame);
  onModels.push(generatorChanged);
})();
