// The comparison page: keyboard shortcuts, time on task, and keeping the lease alive.
"use strict";

(function () {
  const task = document.getElementById("task");
  if (!task) return;
  const form = document.getElementById("judgement");
  const rationale = document.getElementById("rationale");
  const guidelines = document.getElementById("guidelines");
  const flagDialog = document.getElementById("flag-dialog");
  const flagForm = document.getElementById("flag-form");
  const skipForm = document.getElementById("skip-form");
  const timeSpent = document.getElementById("time-spent");
  const leaseStatus = document.getElementById("lease-status");

  // Time on task counts only while the page is visible.
  let visibleMs = 0;
  let visibleSince = document.visibilityState === "visible" ? performance.now() : null;
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      visibleSince = performance.now();
    } else if (visibleSince !== null) {
      visibleMs += performance.now() - visibleSince;
      visibleSince = null;
    }
  });
  function elapsedMs() {
    return Math.round(visibleMs + (visibleSince === null ? 0 : performance.now() - visibleSince));
  }

  let submitting = false;
  form.addEventListener("submit", (event) => {
    if (submitting) { event.preventDefault(); return; }  // one submit per page
    submitting = true;
    timeSpent.value = String(elapsedMs());
  });
  function submitJudgement() {
    if (typeof form.requestSubmit === "function") form.requestSubmit(); else form.submit();
  }

  function check(name, value) {
    const input = form.querySelector(`input[name="${name}"][value="${value}"]`);
    if (input) { input.checked = true; input.dispatchEvent(new Event("change", { bubbles: true })); }
  }

  const ratingByKey = {};
  form.querySelectorAll('input[name="rating"]').forEach((input) => {
    ratingByKey[input.dataset.key] = input;
  });

  function openFlag() {
    if (typeof flagDialog.showModal === "function") flagDialog.showModal();
    document.getElementById("flag-reason").focus();
  }
  document.getElementById("open-flag").addEventListener("click", openFlag);
  document.getElementById("cancel-flag").addEventListener("click", () => flagDialog.close());
  document.getElementById("open-guidelines").addEventListener("click", () => guidelines.showModal());

  // Formatted (Markdown) or raw text: annotators may need to see exactly what the model wrote.
  const rawToggle = document.getElementById("toggle-raw");
  function toggleRaw() {
    const showRaw = rawToggle.getAttribute("aria-pressed") !== "true";
    rawToggle.setAttribute("aria-pressed", String(showRaw));
    task.querySelectorAll(".text.raw").forEach((element) => { element.hidden = !showRaw; });
    task.querySelectorAll(".text.rendered").forEach((element) => { element.hidden = showRaw; });
  }
  rawToggle.addEventListener("click", toggleRaw);

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target instanceof HTMLTextAreaElement || target instanceof HTMLInputElement && target.type === "text";
    if (flagDialog.open) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        flagForm.requestSubmit();
      }
      return;  // Esc closes the dialog natively
    }
    if (guidelines.open) return;
    if (typing) {
      if (event.key === "Escape") { target.blur(); event.preventDefault(); }
      else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); submitJudgement(); }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (ratingByKey[key]) { ratingByKey[key].checked = true; ratingByKey[key].focus({ preventScroll: true }); }
    else if (key === "q") check("a_safety", "safe");
    else if (key === "w") check("a_safety", "unsafe");
    else if (key === "o") check("b_safety", "safe");
    else if (key === "p") check("b_safety", "unsafe");
    else if (key === "r") rationale.focus();
    else if (key === "g") guidelines.showModal();
    else if (key === "m") toggleRaw();
    else if (key === "f") openFlag();
    else if (key === "s") skipForm.submit();
    else if (key === "Enter") submitJudgement();
    else return;
    event.preventDefault();
  });

  // Keep the lease alive while the page is open, so that a slow annotator keeps the slot.
  const heartbeatUrl = task.dataset.heartbeatUrl;
  async function heartbeat() {
    try {
      const response = await fetch(heartbeatUrl, {
        method: "POST",
        headers: { "X-CSRFToken": task.dataset.csrf, "Accept": "application/json" },
        credentials: "same-origin",
      });
      if (response.ok) {
        const body = await response.json();
        leaseStatus.textContent = "Reserved for you until " + new Date(body.expires_at).toLocaleTimeString();
      } else if (response.status === 409) {
        const body = await response.json();
        leaseStatus.textContent = body.detail;
        leaseStatus.classList.add("error");
      }
    } catch (error) {
      leaseStatus.textContent = "Offline? Your work stays on this page; submit when back.";
    }
  }
  setInterval(heartbeat, 60 * 1000);
  task.dataset.ready = "true";  // shortcuts are live (browser tests wait for this)
})();
