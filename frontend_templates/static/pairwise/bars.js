// Progress bars: fill each to its aria-valuenow. Set here, not in a style attribute, as the
// Content Security Policy refuses inline styles; pages that poll update the width themselves.
"use strict";

document.querySelectorAll(".bar[aria-valuenow] > .fill").forEach((fill) => {
  fill.style.width = fill.parentElement.getAttribute("aria-valuenow") + "%";
});
