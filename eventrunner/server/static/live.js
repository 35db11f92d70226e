// eventrunner dashboard: the live parts. One EventSource per tab (GET /live), closed while the
// tab is hidden. The server coalesces: at most one update a second, counts as the cells that
// changed. Text goes in through textContent only (entity ids come from outside).
(function () {
  "use strict";
  var body = document.body;
  var view = body.dataset.live;
  if (!view || !window.EventSource) return;
  var status = document.getElementById("live-status");
  var source = null;
  var lastEventId = "";

  function say(text, on) {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("on", !!on);
  }

  function url() {
    var params = new URLSearchParams({ view: view });
    if (body.dataset.stage) params.set("stage", body.dataset.stage);
    if (body.dataset.entity) params.set("entity", body.dataset.entity);
    // What the page had seen when rendered; later, the last event the stream sent. (EventSource
    // sends Last-Event-ID only on its own reconnects: a stream reopened says it here.)
    params.set("since", lastEventId || body.dataset.since || "0");
    return "/live?" + params.toString();
  }

  // -- counts: numbers and bars ------------------------------------------------------------
  function drawBar(bar) {
    var width = parseFloat(bar.dataset.width || "100");
    var segs = bar.querySelectorAll("rect[data-seg]");
    var total = 0, widths = [], sum = 0;
    segs.forEach(function (r) { total += parseInt(r.dataset.n || "0", 10); });
    segs.forEach(function (r) {
      var n = parseInt(r.dataset.n || "0", 10);
      var w = total && n ? Math.max(width * n / total, 1) : 0;
      widths.push(w); sum += w;
    });
    var scale = sum ? width / sum : 0, x = 0;
    segs.forEach(function (r, i) {
      var w = widths[i] * scale;
      r.setAttribute("x", x.toFixed(2));
      r.setAttribute("width", w.toFixed(2));
      x += w;
    });
  }

  function onCounts(delta) {
    Object.keys(delta).forEach(function (stage) {
      var cells = delta[stage];
      Object.keys(cells).forEach(function (state) {
        var n = cells[state];
        if (state === "total") {
          document.querySelectorAll('[data-total="' + CSS.escape(stage) + '"]').forEach(function (el) {
            el.textContent = String(n);
          });
          return;
        }
        document.querySelectorAll('[data-count="' + CSS.escape(stage + "|" + state) + '"]').forEach(function (el) {
          el.textContent = String(n);
          el.classList.toggle("zero", n === 0);
          var chip = el.closest(".mchip");
          if (chip) chip.classList.toggle("zero", n === 0);
          if (el.hasAttribute("aria-label")) el.setAttribute("aria-label", n + " " + state + " in " + stage);
        });
        document.querySelectorAll('[data-bar="' + CSS.escape(stage) + '"] rect[data-seg="' + state + '"]').forEach(function (r) {
          r.dataset.n = String(n);
        });
      });
      document.querySelectorAll('[data-bar="' + CSS.escape(stage) + '"]').forEach(drawBar);
    });
  }

  // -- status: queue depth and what runs now ---------------------------------------------------
  function link(href, text, cls) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    if (cls) a.className = cls;
    return a;
  }

  function onStatus(s) {
    var depth = document.getElementById("queue-depth");
    if (depth) depth.textContent = String(s.queue_depth);
    var count = document.getElementById("running-count");
    if (count) count.textContent = String(s.running);
    var list = document.getElementById("running-list");
    if (!list) return;
    list.replaceChildren();
    if (!s.running_now.length) {
      var li = document.createElement("li");
      li.className = "muted";
      li.textContent = "nothing running";
      list.appendChild(li);
    }
    s.running_now.forEach(function (r) {
      var li = document.createElement("li");
      li.appendChild(link("/stages/" + encodeURIComponent(r.stage), r.stage));
      li.appendChild(document.createTextNode(" "));
      li.appendChild(link("/entities/" + encodeURIComponent(r.entity) + "?stage=" + encodeURIComponent(r.stage), r.entity, "eid"));
      list.appendChild(li);
    });
  }

  // -- refresh: fetch the page's live fragment again ------------------------------------------
  function onRefresh() {
    if (!window.htmx) return;
    document.querySelectorAll('[hx-trigger~="er-refresh"]').forEach(function (el) {
      window.htmx.trigger(el, "er-refresh");
    });
  }

  // -- events page: the tail, filterable, with pause ------------------------------------------
  var paused = false, held = [];
  var kindFilter = document.getElementById("ev-kind");
  var stageFilter = document.getElementById("ev-stage");
  var pause = document.getElementById("ev-pause");
  var buffered = document.getElementById("ev-buffered");

  function matches(tr) {
    var kind = kindFilter ? kindFilter.value : "";
    var stage = stageFilter ? stageFilter.value : "";
    return (!kind || tr.dataset.kind === kind) && (!stage || tr.dataset.stage.indexOf(stage) >= 0);
  }

  function row(e) {
    var tr = document.createElement("tr");
    tr.dataset.kind = e.kind;
    tr.dataset.stage = e.stage;
    var cells = [];
    for (var i = 0; i < 5; i++) { cells.push(document.createElement("td")); tr.appendChild(cells[i]); }
    var t = document.createElement("time");
    var when = new Date(e.time * 1000);
    t.dateTime = when.toISOString();
    t.textContent = when.toLocaleString();
    cells[0].appendChild(t);
    var badge = document.createElement("span");
    badge.className = "badge ev-" + e.kind;
    badge.textContent = e.kind;
    cells[1].appendChild(badge);
    if (e.stage) cells[2].appendChild(link("/stages/" + encodeURIComponent(e.stage), e.stage));
    if (e.entity) {
      var q = e.stage ? "?stage=" + encodeURIComponent(e.stage) : "";
      cells[3].appendChild(link("/entities/" + encodeURIComponent(e.entity) + q, e.entity, "eid"));
    }
    cells[4].textContent = e.text;
    tr.hidden = !matches(tr);
    return tr;
  }

  function addEvents(list) {
    var rows = document.getElementById("event-rows");
    if (!rows) return;
    list.forEach(function (e) { rows.insertBefore(row(e), rows.firstChild); });
    while (rows.children.length > 500) rows.removeChild(rows.lastChild);
  }

  function onEvents(data) {
    if (paused) {
      held = held.concat(data.events).slice(-500);
      if (buffered) buffered.textContent = held.length + " new while paused";
      return;
    }
    addEvents(data.events);
  }

  if (pause) {
    pause.hidden = false;
    pause.addEventListener("click", function () {
      paused = !paused;
      pause.setAttribute("aria-pressed", String(paused));
      pause.textContent = paused ? "Resume" : "Pause";
      if (!paused) {
        addEvents(held);
        held = [];
        if (buffered) buffered.textContent = "";
      }
    });
  }
  [kindFilter, stageFilter].forEach(function (input) {
    if (!input) return;
    input.addEventListener("input", function () {
      document.querySelectorAll("#event-rows tr").forEach(function (tr) { tr.hidden = !matches(tr); });
    });
  });
  var filters = document.getElementById("event-filters");
  if (filters) filters.addEventListener("submit", function (ev) { ev.preventDefault(); });

  // -- the stream ----------------------------------------------------------------------------
  function handle(fn) {
    return function (msg) {
      if (msg.lastEventId) lastEventId = msg.lastEventId;
      fn(JSON.parse(msg.data));
    };
  }

  function open() {
    if (source) return;
    source = new EventSource(url());
    source.addEventListener("open", function () { say("live", true); });
    source.addEventListener("error", function () { say("reconnecting…", false); });
    source.addEventListener("counts", handle(onCounts));
    source.addEventListener("status", handle(onStatus));
    source.addEventListener("refresh", handle(onRefresh));
    source.addEventListener("events", handle(onEvents));
  }

  function close() {
    if (source) { source.close(); source = null; }
    say("paused (tab hidden)", false);
  }

  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { close(); } else { open(); onRefresh(); }
  });
  window.addEventListener("pagehide", close);
  if (!document.hidden) open();
})();
