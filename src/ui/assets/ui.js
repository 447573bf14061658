// Capstan UI: live updates and filters. Pages are rendered on the server; this only fetches the
// current page again when the server says the cluster changed, and swaps the parts marked
// data-live, so nothing reloads and what the user typed stays.
(() => {
  "use strict";

  for (const select of document.querySelectorAll("form.filters select")) {
    select.addEventListener("change", () => select.form.requestSubmit());
  }

  if (!document.querySelector("[data-live]") || !window.EventSource) return;
  let timer = null;
  let updates = 0;

  async function refresh() {
    timer = null;
    let response;
    try {
      response = await fetch(location.href, { headers: { "X-Capstan-Live": "1" } });
    } catch (_) {
      return;
    }
    if (!response.ok) return;
    const next = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const part of document.querySelectorAll("[data-live]")) {
      const fresh = next.getElementById(part.id);
      if (fresh && fresh.innerHTML !== part.innerHTML) {
        part.replaceWith(document.adoptNode(fresh));
      }
    }
    updates += 1;
    document.documentElement.dataset.liveUpdates = String(updates);
  }

  const source = new EventSource("/live");
  source.addEventListener("changed", () => {
    if (timer === null) timer = setTimeout(refresh, 100);
  });
})();
