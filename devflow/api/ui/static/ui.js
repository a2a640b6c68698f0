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

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(live.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { live.innerHTML = html; } })
      .catch(function () { /* the next event tries again */ })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
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
    cell(row, (event.ts || "").replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC"));
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
  source.addEventListener("end", function () {
    source.close();
    refresh();
    say("ended");
  });
  source.onerror = function () {
    if (source.readyState !== EventSource.CLOSED) { say("reconnecting…"); }
  };
})();
