// While a comparison is being generated: show elapsed time, poll, open it when ready.
"use strict";

(function () {
  const page = document.getElementById("generating");
  if (!page) return;
  const status = document.getElementById("generation-status");
  const elapsed = document.getElementById("elapsed");
  const hint = document.getElementById("generation-hint");
  const next = document.getElementById("generation-next");
  const started = Date.now();

  async function poll() {
    if (elapsed) elapsed.textContent = Math.round((Date.now() - started) / 1000) + " s";
    try {
      const response = await fetch(page.dataset.statusUrl, { headers: { "Accept": "application/json" }, credentials: "same-origin" });
      if (response.ok) {
        const task = await response.json();
        if (task.comparison_status === "ready" || task.comparison_status === "complete") {
          window.location.assign(page.dataset.taskUrl);
          return;
        }
        if (task.comparison_status === "failed") {
          // The API words it for this user: the worker's error for staff, a neutral message else.
          status.textContent = task.generation_error;
          status.classList.add("error");
          if (hint) hint.hidden = true;
          next.hidden = false;
          return;
        }
      }
    } catch (error) { /* offline for a moment: keep polling */ }
    setTimeout(poll, 1000);
  }
  if (status && !status.classList.contains("error")) setTimeout(poll, 500);
})();
