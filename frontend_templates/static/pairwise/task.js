// The comparison page: keyboard shortcuts, time on task, keeping the lease alive, and checking
// the judgement before it is sent (the server checks again and has the last word).
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

  // Every missing choice at once, each shown beside its control; the messages come from the
  // server (data-missing-message), which checks the same rules again.
  const problemsBox = document.getElementById("form-error");
  const checks = [
    { field: document.getElementById("rating-field"), name: "rating" },
    { field: document.getElementById("a_safety-field"), name: "a_safety", required: true },
    { field: document.getElementById("b_safety-field"), name: "b_safety", required: true },
  ];
  function showProblem(field, message) {
    const note = field.querySelector(".field-error");
    note.textContent = message || "";
    note.hidden = !message;
    field.classList.toggle("invalid", Boolean(message));
  }
  function checkJudgement() {
    const problems = [];
    checks.forEach(({ field, name, required }) => {
      const needed = !required || field.classList.contains("required");
      const missing = needed && !form.querySelector(`input[name="${name}"]:checked`);
      const message = missing ? field.dataset.missingMessage : "";
      showProblem(field, message);
      if (message) problems.push(message);
    });
    problemsBox.querySelector("ul").replaceChildren(...problems.map((message) => {
      const item = document.createElement("li");
      item.textContent = message;
      return item;
    }));
    problemsBox.hidden = problems.length === 0;
    return problems;
  }
  // A fixed choice clears its problem at once.
  form.addEventListener("change", (event) => {
    const check = checks.find(({ name }) => event.target.name === name);
    if (check && check.field.classList.contains("invalid")) checkJudgement();
  });

  // What was chosen survives a reload of this page (kept per task in this tab only).
  const draftKey = "pairwise-task-" + task.dataset.assignment;
  const draftFields = ["rating", "a_safety", "b_safety"];
  function saveDraft() {
    const draft = { rationale: rationale.value };
    draftFields.forEach((name) => {
      const checked = form.querySelector(`input[name="${name}"]:checked`);
      draft[name] = checked ? checked.value : "";
    });
    try { sessionStorage.setItem(draftKey, JSON.stringify(draft)); } catch (error) { /* storage off */ }
  }
  function restoreDraft() {
    let draft = null;
    try { draft = JSON.parse(sessionStorage.getItem(draftKey) || "null"); } catch (error) { return; }
    if (!draft) return;
    draftFields.forEach((name) => {
      // What the server shows (after a refused submit) wins over an older draft.
      if (!draft[name] || form.querySelector(`input[name="${name}"]:checked`)) return;
      const input = form.querySelector(`input[name="${name}"][value="${CSS.escape(draft[name])}"]`);
      if (input) input.checked = true;
    });
    if (!rationale.value && draft.rationale) rationale.value = draft.rationale;
  }
  restoreDraft();
  form.addEventListener("change", saveDraft);
  rationale.addEventListener("input", saveDraft);

  let submitting = false;
  form.addEventListener("submit", (event) => {
    if (submitting) { event.preventDefault(); return; }  // one submit per page
    if (checkJudgement().length) { event.preventDefault(); return; }
    submitting = true;
    timeSpent.value = String(elapsedMs());
    // Sent: if the server refuses it, it shows the choices again itself.
    try { sessionStorage.removeItem(draftKey); } catch (error) { /* storage off */ }
  });
  function submitJudgement() {
    if (typeof form.requestSubmit === "function") form.requestSubmit(); else form.submit();
  }

  function check(name, value) {
    const input = form.querySelector(`input[name="${name}"][value="${value}"]`);
    if (input) { input.checked = true; input.dispatchEvent(new Event("change", { bubbles: true })); }
  }
  function checkRating(input) {
    input.checked = true;
    input.focus({ preventScroll: true });
    input.dispatchEvent(new Event("change", { bubbles: true }));
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
    if (ratingByKey[key]) checkRating(ratingByKey[key]);
    else if (key === "q") check("a_safety", "safe");
    else if (key === "w") check("a_safety", "unsafe");
    else if (key === "o") check("b_safety", "safe");
    else if (key === "p") check("b_safety", "unsafe");
    else if (key === "r") rationale.focus();
    else if (key === "a") document.getElementById("response-A-body").focus();
    else if (key === "b") document.getElementById("response-B-body").focus();
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
