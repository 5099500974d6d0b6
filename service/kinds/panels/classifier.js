// The classifier's playground panel: drop an image, see its top labels (POST /classify).
"use strict";

function classify(file) {
  const section = $("#classify");
  return guarded(section, async () => {
    $("#preview").src = URL.createObjectURL(file);
    $("#preview").hidden = false;
    $("#bars").replaceChildren();
    const result = await api("/classify", {images: [await readBase64(file)],
                                           model: $("#classifier").value || undefined});
    $("#bars").replaceChildren(...result.predictions[0].map(({label, score}) => element("li", {},
      element("span", {className: "label", textContent: label}),
      element("span", {className: "bar", style: `width: ${(score * 100).toFixed(1)}%`}),
      element("span", {className: "score", textContent: `${(score * 100).toFixed(1)}%`}))));
  });
}

(() => {
  const drop = $("#drop");
  $("#image").addEventListener("change", (event) => event.target.files[0] && classify(event.target.files[0]));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) classify(event.dataTransfer.files[0]);
  });
})();
