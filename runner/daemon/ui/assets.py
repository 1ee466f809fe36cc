"""The dashboard's only assets, hand-written here (MIT, as the project): no CDN, no build.

live.js polls /ui/changes each second and, when the daemon says something changed (a run
started or finished, a file was reloaded), fetches the same page and swaps its <main>.
Without JavaScript every page still renders whole on the server.
"""

from __future__ import annotations

CSS = """
:root { --ok: #2e7d32; --bad: #c62828; --warn: #ef6c00; --mute: #9e9e9e; --line: #ddd;
  --fg: #1d1d1f; --bg: #fff; --soft: #f5f6f8; --link: #1a56b5; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; gap: 1.5rem; align-items: center; padding: .6rem 1.2rem;
  background: #20232a; color: #fff; }
header nav a { color: #cfd8e3; margin-right: 1rem; text-decoration: none; }
header nav a[aria-current] { color: #fff; border-bottom: 2px solid #fff; }
.live { margin-left: auto; font-size: 12px; color: #9aa5b1; }
.live.on::before { content: "● "; color: #4caf50; }
main, .controls { padding: .8rem 1.2rem; }
.controls { background: var(--soft); border-bottom: 1px solid var(--line); }
a { color: var(--link); }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
th, td { text-align: left; vertical-align: top; padding: .35rem .5rem;
  border-bottom: 1px solid var(--line); }
th { background: var(--soft); font-weight: 600; }
tr.failing td:first-child { border-left: 3px solid var(--bad); }
tr.dst td { background: #fff8e1; color: #8d6e00; font-weight: 600; }
small { color: #666; }
code, pre { font: 12px/1.4 ui-monospace, monospace; }
pre.definition { background: var(--soft); padding: .8rem; overflow: auto; }
.badge { display: inline-block; padding: 0 .45rem; margin-right: .25rem; border-radius: 9px;
  font-size: 12px; background: #e0e0e0; }
.badge.succeeded, .badge.valid, .badge.scheduled { background: #e8f5e9; color: var(--ok); }
.badge.failed, .badge.invalid { background: #ffebee; color: var(--bad); }
.badge.running, .badge.queued, .badge.planned { background: #e3f2fd; color: #1565c0; }
.badge.paused, .badge.suspended, .badge.last_good { background: #fff3e0; color: var(--warn); }
section.invalid { border: 1px solid #f5c2c7; background: #fff5f5; padding: .3rem 1rem; }
.guard { border: 1px solid #ffcc80; background: #fff8e1; padding: .5rem 1rem; }
.notice { color: #1565c0; }
.actions { display: flex; gap: .5rem; margin: .5rem 0; }
.actions button, .controls button, .login button { padding: .3rem .9rem; cursor: pointer; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dl.facts dt { font-weight: 600; }
.pager { margin: .4rem 0; display: flex; gap: 1rem; }
.cell { fill: #eceff1; } .cell.succeeded { fill: var(--ok); } .cell.failed { fill: var(--bad); }
.cell.skipped, .cell.cancelled { fill: var(--mute); } .cell.dry_run { fill: #7e57c2; }
.cell.open { fill: #42a5f5; }
.legend span { margin-right: 1rem; }
.bar { fill: #5c6bc0; }
text.count, text.label { font-size: 11px; text-anchor: middle; fill: #333; }
figure { display: inline-block; margin: 0 2rem 1rem 0; }
figcaption { font-weight: 600; margin-bottom: .3rem; }
.login { max-width: 36rem; }
.login input { width: 22rem; padding: .3rem; }
"""

JS = """
"use strict";
(function () {
  var seen = null, busy = false, badge = document.getElementById("live");
  var main = document.querySelector("main");
  if (main && main.dataset.version) { seen = Number(main.dataset.version); }
  function refresh() {
    return fetch(location.href, {credentials: "same-origin"}).then(function (r) {
      if (!r.ok) { return; }
      return r.text().then(function (text) {
        var page = new DOMParser().parseFromString(text, "text/html");
        var fresh = page.querySelector("main"), old = document.querySelector("main");
        if (fresh && old) { old.replaceWith(fresh); }
      });
    });
  }
  function poll() {
    if (busy) { return; }
    busy = true;
    fetch("/ui/changes", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (!body) { return; }
        if (badge) { badge.textContent = "live"; badge.className = "live on"; }
        var changed = seen !== null && body.version !== seen;
        seen = body.version;
        if (changed) { return refresh(); }
      })
      .catch(function () {
        if (badge) { badge.textContent = "offline"; badge.className = "live"; }
      })
      .then(function () { busy = false; });
  }
  poll();
  setInterval(poll, 1000);
})();
"""
