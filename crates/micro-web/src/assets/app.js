// Micro dashboard: the little JavaScript the pages need. Everything works without it,
// except live views (logs, event tails), which stream with EventSource.
"use strict";

// Installable: register the service worker (it caches the static assets only).
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("/sw.js").catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => {
  // Forms that destroy something ask first.
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (e) => {
      if (!window.confirm(form.dataset.confirm)) e.preventDefault();
    });
  }
  // Live views: <pre data-stream="/url"> appends each message as a line.
  for (const pre of document.querySelectorAll("[data-stream]")) {
    const source = new EventSource(pre.dataset.stream);
    source.onmessage = (e) => {
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(document.createTextNode(e.data + "\n"));
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    };
    source.onerror = () => pre.setAttribute("data-state", "reconnecting");
    source.onopen = () => pre.setAttribute("data-state", "live");
  }
});
