// Long texts in boxes that scroll (the dialogue so far, each response): when a box holds more
// than it shows, a shadow at its bottom and a "Show the whole …" button say so. The boxes take
// the keyboard focus (Tab; then the arrow keys, Page Up/Down, Space, Home/End scroll them), and
// "e" shows every text whole, or boxed again.
"use strict";

(function () {
  const readers = Array.from(document.querySelectorAll(".reader")).filter(
    (reader) => reader.querySelector(".scroller") && reader.querySelector(".more-cue"),
  );
  if (!readers.length) return;

  const box = (reader) => reader.querySelector(".scroller");
  const isExpanded = (reader) => box(reader).classList.contains("expanded");
  const overflows = (reader) => box(reader).scrollHeight > box(reader).clientHeight + 1;

  function update(reader) {
    const scroller = box(reader);
    const cue = reader.querySelector(".more-cue");
    const expanded = isExpanded(reader);
    const more = overflows(reader);
    const atEnd = scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 2;
    scroller.classList.toggle("more-below", more && !atEnd);
    cue.hidden = !(more || expanded);
    cue.setAttribute("aria-expanded", String(expanded));
    cue.querySelector(".more-label").textContent = expanded ? cue.dataset.hide : cue.dataset.show;
  }

  function setExpanded(reader, expanded) {
    box(reader).classList.toggle("expanded", expanded);
    update(reader);
  }

  const updateAll = () => readers.forEach(update);

  readers.forEach((reader) => {
    box(reader).addEventListener("scroll", () => update(reader), { passive: true });
    reader.querySelector(".more-cue").addEventListener("click", () => {
      setExpanded(reader, !isExpanded(reader));
    });
  });
  // Heights change with the window, with web fonts, and when raw text replaces formatted text.
  window.addEventListener("resize", updateAll);
  if ("ResizeObserver" in window) {
    const observer = new ResizeObserver(updateAll);
    readers.forEach((reader) => {
      Array.from(box(reader).children).forEach((child) => observer.observe(child));
    });
  }
  updateAll();

  function typingIn(element) {
    return element instanceof HTMLTextAreaElement || element instanceof HTMLSelectElement
      || (element instanceof HTMLInputElement && !["radio", "checkbox", "button", "submit"].includes(element.type))
      || (element instanceof HTMLElement && element.isContentEditable);
  }

  document.addEventListener("keydown", (event) => {
    if (event.key !== "e" || event.ctrlKey || event.metaKey || event.altKey) return;
    if (typingIn(event.target) || document.querySelector("dialog[open]")) return;
    // Show everything whole if any box still hides something; otherwise box them again.
    const expand = readers.some((reader) => !isExpanded(reader) && overflows(reader));
    readers.forEach((reader) => setExpanded(reader, expand));
    event.preventDefault();
  });
})();
