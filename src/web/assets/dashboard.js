// The dashboard's live parts: the page's content is fetched again every two
// seconds (rendered and escaped by the server), and lifecycle events are
// appended as text. Off with ?live=0.
(function () {
  "use strict";
  if (!document.body.dataset.live) return;
  var content = document.getElementById("content");
  // The page's own choices (the charts' queue and span) come along.
  var partial = new URL(location.href);
  partial.hash = "";
  partial.searchParams.set("partial", "1");
  function refresh() {
    fetch(partial.pathname + partial.search, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) {
        // Signed out meanwhile (a new token): the page shows the login form.
        if (r.status === 401) location.reload();
        return r.ok ? r.text() : null;
      })
      .then(function (html) { if (html !== null) content.innerHTML = html; })
      .catch(function () {})
      .finally(function () { setTimeout(refresh, 2000); });
  }
  setTimeout(refresh, 2000);

  var list = document.getElementById("events");
  // At most 20 events a second, the newest: all of a quiet queue's.
  var stream = new EventSource("/api/events?latest=20");
  // A message holds the events of one write, one JSON object a line; only
  // the last hundred are kept.
  stream.onmessage = function (message) {
    message.data.split("\n").slice(-100).forEach(function (line) {
      var text = line;
      try {
        var e = JSON.parse(line);
        text = [e.at, e.type, e.queue, e.id, e.reason, e.error].filter(Boolean).join("  ");
      } catch (_) { /* shown as it came */ }
      var item = document.createElement("li");
      item.textContent = text;
      list.insertBefore(item, list.firstChild);
    });
    while (list.children.length > 100) list.removeChild(list.lastChild);
  };
})();
