// The classifier's playground panel: drop an image, see its top labels (POST /classify), their
// scores calibrated when the model's card has a temperature, and whether it abstains.
"use strict";

let lastImage = null;  // the file shown, classified again when the threshold changes

function classify(file) {
  const section = $("#classify");
  lastImage = file;
  return guarded(section, async () => {
    $("#preview").src = URL.createObjectURL(file);
    $("#preview").hidden = false;
    $("#bars").replaceChildren();
    $("#abstain").hidden = true;
    const threshold = $("#abstain-below").value;
    const result = await api("/classify", {images: [await readBase64(file)],
                                           model: $("#classifier").value || undefined,
                                           abstain_below: threshold === "" ? undefined : Number(threshold)});
    $("#abstain").hidden = !result.abstain[0];
    $("#bars").replaceChildren(...result.predictions[0].map(({label, score}) => element("li", {},
      element("span", {className: "label", textContent: label}),
      element("span", {className: "bar", style: `width: ${(score * 100).toFixed(1)}%`}),
      element("span", {className: "score", textContent: `${(score * 100).toFixed(1)}%`}))));
  });
}

// What the chosen version's scores are: calibrated by its card's temperature, or raw softmax.
function classifierChanged() {
  const temperature = selected("classifier")?.card?.temperature;
  $("#calibration").textContent = temperature ? `Scores calibrated (temperature ${temperature})`
                                              : "Scores not calibrated (the model's card has no temperature)";
}

(() => {
  const drop = $("#drop");
  onModels.push(classifierChanged);
  $("#classifier").addEventListener("change", classifierChanged);
  $("#abstain-below").addEventListener("change", () => lastImage && classify(lastImage));
  $("#image").addEventListener("change", (event) => event.target.files[0] && classify(event.target.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) classify(event.dataTransfer.files[0]);
  });
})();
