// bemi-pg serve: times in the viewer's time zone, copy buttons, the live tail. The pages work without it.
(function () {
  "use strict";
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  var format = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric", hour: "2-digit",
    minute: "2-digit", second: "2-digit", timeZoneName: "short" });

  function localize(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var moment = new Date(el.getAttribute("datetime"));
      if (!isNaN(moment)) { el.textContent = format.format(moment); }
    });
    root.querySelectorAll("[data-copy]").forEach(function (el) {
      if (el.dataset.copyReady || !navigator.clipboard) { return; }
      el.dataset.copyReady = "1";
      var button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "copy";
      button.setAttribute("aria-label", "Copy " + el.dataset.copy);
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(el.dataset.copy).then(function () { button.textContent = "copied"; });
      });
      el.after(button);
    });
  }

  function tail() {
    var status = document.getElementById("tail-status");
    var body = document.getElementById("tail");
    if (!status || !body || !window.EventSource) { return; }
    var events = new EventSource(status.dataset.events);
    events.addEventListener("change", function (event) {
      var holder = document.createElement("tbody");
      holder.innerHTML = event.data;  // rendered and escaped by the server
      var row = holder.firstElementChild;
      if (!row) { return; }
      row.classList.add("fresh");
      localize(row);
      body.insertBefore(row, body.firstChild);
      while (body.children.length > 500) { body.removeChild(body.lastChild); }
      status.textContent = "Change " + row.querySelector("td").textContent.trim() + " stored.";
    });
    events.addEventListener("signed-out", function () { events.close(); status.textContent = "Signed out: reload to sign in again."; });
    events.onerror = function () { status.textContent = "Reconnecting…"; };
    events.onopen = function () { status.textContent = "Watching for new changes."; };
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("input[data-time-zone]").forEach(function (el) { if (!el.value) { el.value = zone; } });
    localize(document);
    tail();
    // Shorter URLs to share: empty filters are not sent.
    document.querySelectorAll("form[method=get]").forEach(function (form) {
      form.addEventListener("submit", function () {
        form.querySelectorAll("input, select").forEach(function (el) { if (!el.value) { el.disabled = true; } });
      });
    });
  });
})();
