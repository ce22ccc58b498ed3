// ScanStream console: keep a page's live parts current without a reload.
// The server sends an event when its stream starts and whenever the ledger changes (/api/events); the page
// then fetches itself again and swaps in each part marked data-live (same ids),
// at most about once a second, leaving alone a part that holds the keyboard focus.
(function () {
  "use strict";
  if (!window.EventSource || !window.fetch || !document.querySelector("[data-live]")) {
    return;
  }
  var MIN_INTERVAL_MS = 1000;
  var pending = false;
  var last = 0;

  function swap(fresh) {
    var parts = document.querySelectorAll("[data-live]");
    for (var i = 0; i < parts.length; i += 1) {
      var part = parts[i];
      var replacement = fresh.getElementById(part.id);
      if (!replacement || part.contains(document.activeElement)) {
        continue;
      }
      if (replacement.innerHTML !== part.innerHTML) {
        part.innerHTML = replacement.innerHTML;
      }
    }
  }

  function refresh() {
    pending = false;
    last = Date.now();
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.redirected || response.status === 401) {
          window.location.reload(); // signed out meanwhile: the sign-in page
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (text) {
        if (text) {
          swap(new DOMParser().parseFromString(text, "text/html"));
          document.body.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () { /* the next change tries again */ });
  }

  function changed() {
    if (pending) {
      return;
    }
    pending = true;
    window.setTimeout(refresh, Math.max(0, MIN_INTERVAL_MS - (Date.now() - last)));
  }

  // "ready" comes once the stream watches the ledger (again after a reconnect): fetch once
  // for what changed before it, then on each "change".
  var events = new EventSource("/api/events");
  events.addEventListener("ready", changed);
  events.addEventListener("change", changed);
})();
