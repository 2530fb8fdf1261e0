/* teachloop console: keyboard shortcuts of the expert's work pages (web/work.py).
 *
 * Progressive enhancement only: every page works as plain HTML forms without this file.
 * No framework, no network request of its own, no eval, nothing read from the page as HTML.
 *
 *   Ctrl+Enter / Cmd+Enter   submit the answer (also while typing in a text field)
 *   Enter                    submit, when the focus is not in a text field, a button or a link
 *   Escape                   leave a text field (so that the one-key shortcuts work)
 *   any [data-key] key       click that element (s: skip, n: next task, a / b: choose A or B, ...)
 *   0-9                      score the current criterion / pick the current question's option
 *                            ([data-pick] fieldsets; the current one is the focused one, else the
 *                            first without an answer), then move to the next one
 *   a, b, c ... (ranked)     give that candidate the next rank ([data-rank] selects); Backspace clears
 *
 * The answer form ([data-task]) also reports the seconds the expert was active on the page
 * (a key, a click or a scroll in the last 60 seconds, page visible) in its active_seconds field.
 */
(function () {
  "use strict";

  var form = document.querySelector("form[data-task]");
  var IDLE_MS = 60000;
  var lastInput = Date.now();
  var active = 0;

  function typing(el) {
    if (!el || !el.tagName) { return false; }
    var tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable) { return true; }
    if (tag !== "INPUT") { return false; }
    return ["radio", "checkbox", "button", "submit", "reset", "hidden"].indexOf(el.type) < 0;
  }

  function submit(target) {
    if (!target) { return false; }
    var button = target.querySelector("button[type=submit]:not([formaction]), button:not([type]):not([formaction])");
    if (target.requestSubmit) { target.requestSubmit(button || undefined); } else { target.submit(); }
    return true;
  }

  function groups() { return Array.prototype.slice.call(document.querySelectorAll("fieldset[data-pick]")); }

  function currentGroup(list) {
    var focused = document.activeElement && document.activeElement.closest
      ? document.activeElement.closest("fieldset[data-pick]") : null;
    if (focused) { return focused; }
    for (var i = 0; i < list.length; i++) {
      if (!list[i].querySelector("input[type=radio]:checked")) { return list[i]; }
    }
    return list.length ? list[list.length - 1] : null;
  }

  function pick(digit) {
    var list = groups();
    var group = currentGroup(list);
    if (!group) { return false; }
    var radio = group.querySelector('input[type=radio][data-n="' + digit + '"]');
    if (!radio) { return false; }
    radio.checked = true;
    radio.dispatchEvent(new Event("change", { bubbles: true }));
    var next = list[list.indexOf(group) + 1];
    var focus = next ? (next.querySelector("input[type=radio]:checked") || next.querySelector("input[type=radio]")) : radio;
    focus.focus();
    return true;
  }

  function rank(letter) {
    var selects = Array.prototype.slice.call(document.querySelectorAll("select[data-rank]"));
    var chosen = null;
    selects.forEach(function (s) { if (s.getAttribute("data-rank") === letter) { chosen = s; } });
    if (!chosen) { return false; }
    if (chosen.value) { return true; }
    var used = selects.filter(function (s) { return s.value; }).length;
    chosen.value = String(used + 1);
    chosen.dispatchEvent(new Event("change", { bubbles: true }));
    return true;
  }

  function clearRanks() {
    var selects = document.querySelectorAll("select[data-rank]");
    if (!selects.length) { return false; }
    Array.prototype.forEach.call(selects, function (s) { s.value = ""; });
    return true;
  }

  function clickKey(key) {
    var found = null;
    Array.prototype.forEach.call(document.querySelectorAll("[data-key]"), function (el) {
      if (!found && el.getAttribute("data-key") === key && !el.disabled) { found = el; }
    });
    if (!found) { return false; }
    if (found.type === "radio") {
      found.checked = true;
      found.dispatchEvent(new Event("change", { bubbles: true }));
      found.focus();
    } else {
      found.click();
    }
    return true;
  }

  document.addEventListener("keydown", function (ev) {
    lastInput = Date.now();
    if (ev.defaultPrevented || ev.altKey || ev.isComposing) { return; }
    var target = ev.target;
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") {
      var owner = target && target.form ? target.form : form;
      if (submit(owner)) { ev.preventDefault(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey) { return; }
    if (typing(target)) {
      if (ev.key === "Escape") { target.blur(); ev.preventDefault(); }
      return;
    }
    var tag = target && target.tagName;
    if (ev.key === "Enter") {
      if (tag === "BUTTON" || tag === "A" || tag === "SUMMARY") { return; }
      if (submit(target && target.form ? target.form : form)) { ev.preventDefault(); }
      return;
    }
    if (ev.key === "Backspace" && clearRanks()) { ev.preventDefault(); return; }
    var key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    var handled = (/^[0-9]$/.test(key) && pick(key)) || (/^[a-z]$/.test(key) && rank(key)) || clickKey(key);
    if (handled) { ev.preventDefault(); }
  });

  ["mousedown", "scroll", "input"].forEach(function (name) {
    document.addEventListener(name, function () { lastInput = Date.now(); }, { passive: true, capture: true });
  });

  if (form) {
    var field = form.querySelector("input[name=active_seconds]");
    window.setInterval(function () {
      if (document.visibilityState === "visible" && Date.now() - lastInput < IDLE_MS) {
        active += 1;
        if (field) { field.value = String(active); }
      }
    }, 1000);
  }
})();
