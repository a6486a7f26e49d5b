// edge-hmi: the live view (server-sent events) and one-key review. No libraries.
"use strict";
(function () {
  function $(id) { return document.getElementById(id); }
  function text(id, value) { var el = $(id); if (el) el.textContent = value; }
  function cls(el, name) { el.classList.remove("ok", "warn", "badtxt"); if (name) el.classList.add(name); }
  function verdict(d) { return d.kind === "accept" ? "ACCEPT" : d.kind === "fault" ? "FAULT" : "REJECT"; }
  function p(v) { return v === null || v === undefined ? "–" : Number(v).toFixed(4); }
  function hhmmss(ts) { var t = new Date(ts * 1000); return t.toTimeString().slice(0, 8); }
  function field(id, value, state) { var el = $(id); if (!el) return; el.textContent = value; cls(el, state); }

  function showCrop(seq, tries) {
    var img = $("current-crop"), none = $("current-nocrop");
    img.onload = function () { img.classList.remove("hidden"); none.classList.add("hidden"); };
    img.onerror = function () {
      // the daemon writes the crop on its own thread just after journaling: try again once
      if (tries > 0 && String($("current").dataset.seq) === String(seq)) {
        setTimeout(function () { showCrop(seq, tries - 1); }, 700);
      } else { img.classList.add("hidden"); none.classList.remove("hidden"); }
    };
    img.src = "/crop/" + seq + (tries < 2 ? "?t=" + tries : "");
  }

  function onDecision(d) {
    var cur = $("current");
    cur.dataset.seq = d.seq;
    var v = $("current-verdict");
    v.textContent = verdict(d);
    v.className = "verdict " + d.kind;
    text("current-p", p(d.p_defect));
    text("current-reason", d.reason || "");
    text("current-part", d.part_id);
    text("current-seq", d.seq);
    showCrop(d.seq, 2);
    var body = $("recent"), tr = document.createElement("tr");
    tr.className = d.kind;
    tr.dataset.seq = d.seq;
    [hhmmss(d.ts), d.seq, d.part_id, verdict(d), p(d.p_defect), d.reason || ""].forEach(function (c) {
      var td = document.createElement("td"); td.textContent = c; tr.appendChild(td);
    });
    body.insertBefore(tr, body.firstChild);
    while (body.children.length > 20) body.removeChild(body.lastChild);
  }

  function onHealth(h) {
    var d = h.daemon || {};
    field("h-daemon", d.state + (d.parts !== undefined && d.parts !== null ? " · " + d.parts + " parts" : ""),
          d.state === "online" ? "ok" : "badtxt");
    var c = h.camera;
    if (c) field("h-camera", c.connected ? (c.fault ? "fault: " + c.fault : "connected · " + c.fps + " fps") : "not connected",
                 c.connected && !c.fault ? "ok" : "badtxt");
    var b = h.broker || {};
    field("h-broker", !b.configured ? "not configured" : b.connected ? "connected" : (b.error || "not connected"),
          !b.configured ? "warn" : b.connected ? "ok" : "badtxt");
    var j = h.journal || {};
    field("h-journal", !j.ok ? (j.error || "unreadable") : j.pending + " pending" + (j.expired ? ", " + j.expired + " past deadline" : ""),
          !j.ok ? "badtxt" : j.pending > 10 ? "warn" : "ok");
    if (h.drift) field("h-drift", h.drift.drifting.length ? "drifting: " + h.drift.drifting.join(", ") : "none",
                       h.drift.drifting.length ? "warn" : "ok");
    var g = h.guard || {};
    field("h-guard", (g.guard_faults || 0) + " guard faults in the last " + g.last_parts + " parts",
          g.guard_faults > 10 ? "warn" : "ok");
    if (h.model) field("h-model", (h.model.recipe ? "recipe " + h.model.recipe + " · " : "") + (h.model.id || "?") + (h.model.threshold !== undefined && h.model.threshold !== null ? " · threshold " + h.model.threshold : ""), "");
    field("h-shadow", h.shadow ? h.shadow.id + " · " + h.shadow.disagree + " of " + h.shadow.judged + " disagree" : "none", "");
  }

  function live() {
    if (!$("live") || !window.EventSource) return;
    var conn = $("conn"), es = new EventSource("/events");
    es.addEventListener("open", function () { conn.textContent = "live"; cls(conn, "ok"); });
    es.addEventListener("error", function () { conn.textContent = "reconnecting…"; cls(conn, "warn"); });
    es.addEventListener("decision", function (e) { onDecision(JSON.parse(e.data)); });
    es.addEventListener("health", function (e) { onHealth(JSON.parse(e.data)); });
  }

  function review() {
    var form = $("review-form");
    if (!form) return;
    document.addEventListener("keydown", function (e) {
      if (e.altKey || e.ctrlKey || e.metaKey || e.repeat) return;
      var v = { d: "defect", o: "ok", s: "skip" }[e.key.toLowerCase()];
      if (!v) return;
      var btn = form.querySelector('button[value="' + v + '"]');
      if (btn && !form.dataset.sent) { form.dataset.sent = "1"; e.preventDefault(); btn.click(); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () { live(); review(); });
})();
