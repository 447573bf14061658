// Capstan UI: live updates and filters. Pages are rendered on the server; this only fetches the
// current page again when the server says the cluster changed, and swaps the parts marked
// data-live, so nothing reloads and what the user typed stays.
(() => {
  "use strict";

  for (const select of document.querySelectorAll("form.filters select")) {
    select.addEventListener("change", () => select.form.requestSubmit());
  }

  // Actions are posted without leaving the page; its live updates then show the progress.
  // Without this script the forms still post, and the server redirects back.
  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!form.matches("form.action")) return;
    event.preventDefault();
    const outcome = form.querySelector(".outcome") || form.appendChild(document.createElement("span"));
    outcome.className = "outcome";
    outcome.setAttribute("role", "status");
    outcome.textContent = "Sending…";
    try {
      const response = await fetch(form.getAttribute("action"), { method: "POST", body: new URLSearchParams(new FormData(form)) });
      if (response.ok) {
        outcome.textContent = "Sent";
        refresh();
      } else {
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const why = page.querySelector(".banner");
        outcome.textContent = why ? why.textContent : "Refused (" + response.status + ")";
        outcome.classList.add("refused");
      }
    } catch (_) {
      outcome.textContent = "The UI could not be reached";
      outcome.classList.add("refused");
    }
  });

  let timer = null;
  let updates = 0;
  // Each refresh is numbered: an answer that comes after a newer one's is dropped.
  let latest = 0;

  async function refresh() {
    timer = null;
    const mine = ++latest;
    let response;
    try {
      response = await fetch(location.href, { headers: { "X-Capstan-Live": "1" } });
    } catch (_) {
      return;
    }
    if (!response.ok || mine !== latest) return;
    const text = await response.text();
    if (mine !== latest) return;
    const next = new DOMParser().parseFromString(text, "text/html");
    for (const part of document.querySelectorAll("[data-live]")) {
      const fresh = next.getElementById(part.id);
      if (fresh && fresh.innerHTML !== part.innerHTML) {
        part.replaceWith(document.adoptNode(fresh));
      }
    }
    updates += 1;
    document.documentElement.dataset.liveUpdates = String(updates);
  }

  const url = document.body.dataset.liveUrl;
  if (!url || !window.EventSource) return;
  const source = new EventSource(url);
  source.addEventListener("changed", () => {
    if (timer === null) timer = setTimeout(refresh, 100);
  });
})();
