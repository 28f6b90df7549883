// Live batch progress: polls the progress API and updates the figures on the page.
"use strict";

(function () {
  const card = document.getElementById("progress");
  if (!card) return;
  const fill = card.querySelector(".bar .fill");
  const bar = card.querySelector(".bar");

  function format(value) {
    if (value === null || value === undefined) return "—";
    return typeof value === "number" && !Number.isInteger(value) ? value.toFixed(2) : String(value);
  }

  function renderAnnotators(rows) {
    const body = document.getElementById("annotators");
    body.replaceChildren(...rows.map((row) => {
      const tr = document.createElement("tr");
      for (const value of [row.annotator, row.annotations, row.median_seconds, row.gold_accuracy, row.skipped_or_flagged]) {
        const td = document.createElement("td");
        td.textContent = format(value);
        tr.appendChild(td);
      }
      return tr;
    }));
  }

  async function refresh() {
    const response = await fetch(card.dataset.url, { headers: { "Accept": "application/json" }, credentials: "same-origin" });
    if (!response.ok) return;
    const progress = await response.json();
    card.querySelectorAll("[data-field]").forEach((element) => {
      element.textContent = format(progress[element.dataset.field]);
    });
    fill.style.width = progress.percent_complete + "%";
    bar.setAttribute("aria-valuenow", progress.percent_complete);
    renderAnnotators(progress.annotators);
  }
  setInterval(refresh, 5000);
})();
