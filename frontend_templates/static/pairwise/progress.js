// Live batch progress: polls the progress API and updates the figures on the page.
//
// The poll stays cheap for the server: one request at a time, none while the tab is hidden
// (it resumes when the tab is shown), none once the batch is closed (its figures are final),
// and after each answer it waits ten times as long as the answer took, at least 5 seconds,
// so that a batch whose figures take long to compute is polled less often, not piled up on.
"use strict";

(function () {
  const card = document.getElementById("progress");
  if (!card) return;
  const fill = card.querySelector(".bar .fill");
  const bar = card.querySelector(".bar");
  const INTERVAL_MS = 5000;
  const WAIT_PER_MS_OF_ANSWER = 10;
  let timer = null;
  let inFlight = false;
  let closed = card.dataset.final === "true";

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

  function render(progress) {
    card.querySelectorAll("[data-field]").forEach((element) => {
      element.textContent = format(progress[element.dataset.field]);
    });
    fill.style.width = progress.percent_complete + "%";
    bar.setAttribute("aria-valuenow", progress.percent_complete);
    renderAnnotators(progress.annotators);
  }

  function schedule(delay) {
    if (closed || inFlight || timer !== null) return;
    timer = setTimeout(refresh, delay);
  }

  async function refresh() {
    timer = null;
    if (document.hidden) return; // shown again: visibilitychange polls at once
    inFlight = true;
    const started = performance.now();
    try {
      const response = await fetch(card.dataset.url, { headers: { "Accept": "application/json" }, credentials: "same-origin" });
      if (response.ok) {
        const progress = await response.json();
        render(progress);
        closed = progress.status === "closed";
      }
    } catch (error) {
      // The network or the server hiccuped: the next poll tries again.
    } finally {
      inFlight = false;
    }
    schedule(Math.max(INTERVAL_MS, WAIT_PER_MS_OF_ANSWER * (performance.now() - started)));
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) schedule(0);
  });
  schedule(INTERVAL_MS);
})();
