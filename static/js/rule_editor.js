// The rule editor: shows the parameters of the chosen kind only, and runs the rule in the form as one types
// (a dry run on the server, 300 ms after the last key, the request before it aborted). Everything from the
// server is put in with textContent: item text is untrusted.
(function () {
  "use strict";
  var DEBOUNCE_MS = 300;

  function ready(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  ready(function () {
    var form = document.getElementById("rule-form");
    if (!form) return;
    var kind = document.getElementById("id_kind");
    var status = document.getElementById("dry-run-status");
    var sme = document.getElementById("dry-run-sme");
    var examples = document.getElementById("dry-run-examples");
    var timer = null;
    var pending = null;

    // Only the chosen kind's parameters are shown and sent; the others are hidden and disabled.
    function showKind() {
      form.querySelectorAll("fieldset.params").forEach(function (set) {
        var chosen = set.getAttribute("data-kind") === kind.value;
        set.hidden = !chosen;
        set.disabled = !chosen;
      });
    }

    function clearErrors() {
      form.querySelectorAll("[data-error-for]").forEach(function (el) { el.textContent = ""; });
      form.querySelectorAll("[aria-invalid]").forEach(function (el) { el.removeAttribute("aria-invalid"); });
    }

    function showErrors(errors) {
      var unplaced = [];
      Object.keys(errors).forEach(function (name) {
        var text = errors[name].join(" ");
        var el = form.querySelector('[data-error-for="' + CSS.escape(name) + '"]');
        if (el) {
          el.textContent = text;
          var input = form.querySelector('[name="' + CSS.escape(name) + '"]');
          if (input) input.setAttribute("aria-invalid", "true");
        } else {
          unplaced.push(name + ": " + text);
        }
      });
      status.textContent = "The rule cannot run yet: " + (unplaced.join(" ") || "see the field marked above.");
    }

    function percent(x) { return (100 * x).toFixed(1) + " %"; }
    function count(n) { return n.toLocaleString("en"); }

    function showResult(data) {
      var where = data.complete
        ? "of all " + count(data.items) + " items"
        : "in the first " + count(data.scanned) + " of " + count(data.items) +
          " items (by import order; the rest not read)";
      status.textContent = "Would reject " + count(data.would_reject) + " " + where + "." +
        (data.compile && data.compile.note ? " " + data.compile.note : "");
      var s = data.sme;
      if (s.n) {
        var line = "Of these, SMEs accepted " + s.accepted + " and rejected " + s.rejected + " (n = " + s.n +
          "): the SMEs accepted " + percent(s.share) + " of the labelled items it would reject";
        if (s.interval) line += ", 95 % interval " + percent(s.interval[0]) + "–" + percent(s.interval[1]);
        line += "." + (s.small_n ? " Too few SME labels to mean much." : "");
        sme.textContent = line;
      } else {
        sme.textContent = "None of these has an SME label, so how often the SMEs accepted them cannot be measured (n = 0).";
      }
      examples.replaceChildren();
      data.examples.forEach(function (example) {
        var li = document.createElement("li");
        var link = document.createElement("a");
        link.href = example.url;
        link.textContent = "Item " + example.external_id;
        li.appendChild(link);
        if (example.sme) li.appendChild(document.createTextNode(" (SME: " + example.sme + ")"));
        var text = document.createElement("div");
        text.className = "text snippet";
        text.appendChild(document.createTextNode(example.snippet.before));
        if (example.snippet.match) {
          var mark = document.createElement("mark");
          mark.textContent = example.snippet.match;
          text.appendChild(mark);
        }
        text.appendChild(document.createTextNode(example.snippet.after));
        li.appendChild(text);
        examples.appendChild(li);
      });
    }

    function dryRun() {
      if (pending) pending.abort();
      var controller = new AbortController();
      pending = controller;
      status.textContent = "Counting…";
      fetch(form.getAttribute("data-dry-run-url"), {
        method: "POST",
        body: new FormData(form),
        headers: { "X-CSRFToken": form.querySelector("[name=csrfmiddlewaretoken]").value, "Accept": "application/json" },
        credentials: "same-origin",
        signal: controller.signal,
      }).then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      }).then(function (answer) {
        if (pending !== controller) return;
        pending = null;
        clearErrors();
        if (answer.ok) {
          showResult(answer.data);
        } else {
          sme.textContent = "";
          examples.replaceChildren();
          showErrors(answer.data.errors || {});
        }
      }).catch(function (error) {
        if (error.name === "AbortError") return;
        if (pending === controller) pending = null;
        status.textContent = "The dry run failed: " + error.message;
      });
    }

    function schedule() {
      clearTimeout(timer);
      timer = setTimeout(dryRun, DEBOUNCE_MS);
    }

    kind.addEventListener("change", showKind);
    form.addEventListener("input", schedule);
    form.addEventListener("change", schedule);
    showKind();
    if (form.hasAttribute("data-run-on-load") && form.querySelector("[data-error-for]:not(:empty)") === null) dryRun();
  });
})();
