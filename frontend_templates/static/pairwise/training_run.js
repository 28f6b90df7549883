// A training run's page while it is queued or running: polls the run's status endpoint (small:
// no metrics, the logs' last lines), updates the progress bar, the status, the pair counts and
// the last log lines, and reloads the page once the run has finished so that the server renders
// its metrics and plots.
"use strict";

(function () {
  const card = document.getElementById("training-run");
  if (!card) return;
  const finished = (status) => status === "succeeded" || status === "failed";
  if (finished(card.dataset.status)) return;
  const bar = card.querySelector(".bar");
  const fill = card.querySelector(".bar .fill");
  const statusLabel = document.getElementById("run-status");
  const percent = document.getElementById("run-progress");
  const error = document.getElementById("run-error");
  const logs = document.getElementById("run-logs");
  const pairs = document.getElementById("run-pairs");
  const labels = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed" };

  // How many pairs the run trains on and holds out, as soon as its data is frozen.
  function showPairs(run) {
    if (!pairs || pairs.dataset.known === "true" || run.train_pairs === null) return;
    pairs.textContent = `${run.train_pairs} trained on, ${run.eval_pairs} held out`;
    pairs.dataset.known = "true";
  }

  async function poll() {
    try {
      const response = await fetch(card.dataset.statusUrl, { headers: { "Accept": "application/json" }, credentials: "same-origin" });
      if (response.ok) {
        const run = await response.json();
        if (finished(run.status)) {
          window.location.reload();
          return;
        }
        const value = Math.round(run.progress * 100);
        fill.style.width = value + "%";
        bar.setAttribute("aria-valuenow", value);
        percent.textContent = value;
        statusLabel.textContent = labels[run.status] || run.status;
        statusLabel.className = "status " + run.status;
        if (run.error) { error.textContent = run.error; error.hidden = false; }
        showPairs(run);
        const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
        logs.textContent = run.log_tail;
        if (atBottom) logs.scrollTop = logs.scrollHeight;
      }
    } catch (failure) { /* offline for a moment: keep polling */ }
    setTimeout(poll, 2000);
  }
  setTimeout(poll, 1000);
})();
