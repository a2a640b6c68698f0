// The run page, live: each event of the run's durable log (Server-Sent Events, ids =
// the event's seq, so a reconnect asks for exactly what it missed) is added to the
// events table, and the state and phases are read again from the server as stored.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) { return; }
  var status = document.getElementById("live-status");
  var table = document.getElementById("events");
  var busy = false, again = false;

  function say(text) { if (status) { status.textContent = text; } }

  // a page's answer, or null; signed out (sent on to the sign-in page), the page stops
  // following rather than show the sign-in form in place of the run
  function readable(r) {
    if (r.redirected || !r.ok) {
      if (r.redirected) { say("signed out: reload the page to sign in again"); }
      return null;
    }
    return r.text();
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(live.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(readable)
      .then(function (html) { if (html !== null) { live.innerHTML = html; } })
      .catch(function () { /* the next event tries again */ })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  function refreshSections() {
    fetch(window.location.pathname, { credentials: "same-origin",
                                      headers: { Accept: "text/html" } })
      .then(readable)
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        fresh.querySelectorAll("section[data-refresh]").forEach(function (section) {
          var old = document.getElementById(section.id);
          if (old) { old.replaceWith(document.importNode(section, true)); }
        });
      })
      .catch(function () { /* a reload shows them */ });
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function add(event) {
    if (!table || table.querySelector('tr[data-seq="' + event.seq + '"]')) { return; }
    var row = document.createElement("tr");
    row.dataset.seq = String(event.seq);
    cell(row, String(event.seq));
    cell(row, (event.ts || "").replace("T", " ").replace(/\.\d+/, "").replace(/(Z|\+00:00)$/, " UTC"));
    row.children[1].className = "when";
    cell(row, event.type);
    cell(row, event.phase || "");
    var code = document.createElement("code");
    code.className = "payload";
    code.textContent = JSON.stringify(event.payload);
    cell(row, "").appendChild(code);
    table.insertBefore(row, table.firstChild);
  }

  var source = new EventSource(live.dataset.stream + "?after=" + live.dataset.after);
  source.onopen = function () { say("following live"); };
  source.onmessage = function (message) { add(JSON.parse(message.data)); refresh(); };
  source.addEventListener("resync", function () { refresh(); });
  source.addEventListener("unauthorized", function () {
    source.close();  // signed out elsewhere, or the token revoked: no reconnecting
    say("signed out: reload the page to sign in again");
  });
  source.addEventListener("end", function () {
    source.close();
    say("ended");
    refresh();
    // the run ended while the page was open: its report, diff, invocations and
    // bindings are read again and swapped in (the page is not reloaded)
    if (live.dataset.ended !== "true") { refreshSections(); }
  });
  source.onerror = function () {
    // the browser reconnects by itself (with Last-Event-ID) unless the server refused
    // the stream (signed out, say): then only a reload follows the run again
    say(source.readyState === EventSource.CLOSED ? "not following: reload the page"
                                                 : "reconnecting…");
  };
})();
