// Keyboard-first review. Keys (all listed on the card and in the ? dialog): a accept; r reject; 1-9 pick a
// reason, before or after r; 0 other reason (type it, Enter rejects); e edit the response; c comment;
// x context; s skip; u undo (again to go further back); Esc leaves a text box or cancels a waiting reject; ? keys.
// No reason is ever picked for the SME: a reject without one waits for a digit (the server refuses it too).
(function () {
  var OTHER = "_other";
  var awaitingReason = false;

  function typing(target) {
    return target && target.closest && target.closest("input[type=text], textarea, [contenteditable]");
  }
  function card() { return document.getElementById("review-card"); }
  function find(selector) { var root = card(); return root && root.querySelector(selector); }
  function press(selector) {
    var root = card();
    var button = root && root.querySelector(selector);
    if (!button || button.disabled) return false;
    // A card swapped in a moment ago may not be wired to htmx yet; without this a
    // fast key would submit the form as a full page load.
    if (window.htmx) window.htmx.process(root);
    button.click();
    return true;
  }
  function pickedReason() { return find('input[name="reason"]:checked'); }
  function otherWords() {
    var box = find('input[name="reason_other"]');
    return box ? box.value.trim() : "";
  }
  function askForReason(on) {
    awaitingReason = on;
    var prompt = find(".reject-prompt");
    if (prompt) prompt.hidden = !on;
  }
  function focusOther() {
    var box = find('input[name="reason_other"]');
    if (box) box.focus();
  }
  // Reject only with a reason: with none picked, ask for one; with "other" and no words, ask for the words.
  function reject() {
    var reason = pickedReason();
    if (!reason) { askForReason(true); return true; }
    if (reason.value === OTHER && !otherWords()) { askForReason(true); focusOther(); return true; }
    askForReason(false);
    return press('button[name="decision"][value="reject"]');
  }
  function pickReason(digit) {
    var radio = digit === 0
      ? find('input[name="reason"][value="' + OTHER + '"]')
      : card().querySelectorAll('input[name="reason"]:not([value="' + OTHER + '"])')[digit - 1];
    if (!radio) return false;
    radio.checked = true;
    if (digit === 0) { focusOther(); return true; }  // Enter in the box rejects once words are typed
    if (awaitingReason) reject();
    return true;
  }

  document.addEventListener("keydown", function (event) {
    var keys = document.getElementById("keys");
    if (event.key === "Escape" && typing(event.target)) {
      event.target.blur();
      if (card()) card().focus();
      return;
    }
    // Enter in the "other" box rejects (not the form's default button, accept).
    if (event.key === "Enter" && event.target.matches && event.target.matches('#review-card input[name="reason_other"]')) {
      event.preventDefault();
      var other = find('input[name="reason"][value="' + OTHER + '"]');
      if (other) other.checked = true;
      if (otherWords()) { event.target.blur(); reject(); } else askForReason(true);
      return;
    }
    if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    if (event.key === "?") {
      event.preventDefault();
      if (keys.open) keys.close(); else keys.showModal();
      return;
    }
    if (keys && keys.open) return;
    var root = card();
    if (!root) return;
    var done = false;
    if (event.key === "Escape" && awaitingReason) { askForReason(false); done = true; }
    else if (event.key === "a") { askForReason(false); done = press('button[name="decision"][value="accept"]'); }
    else if (event.key === "r") done = reject();
    else if (event.key === "s") done = press('button[data-key="s"]');
    else if (event.key === "u") done = press('button[data-key="u"]');
    else if (event.key === "c") {
      var comment = root.querySelector('textarea[name="comment"]');
      if (comment) { comment.focus(); done = true; }
    } else if (event.key === "e") {
      var correction = root.querySelector("details.correction");
      if (correction) {
        correction.open = true;
        var box = correction.querySelector("textarea");
        box.focus();
        box.setSelectionRange(0, 0);
        box.scrollTop = 0;
        done = true;
      }
    } else if (event.key === "x") {
      var context = root.querySelector("details.context");
      if (context) { context.open = !context.open; done = true; }
    } else if (/^[0-9]$/.test(event.key)) done = pickReason(Number(event.key));
    if (done) event.preventDefault();
  });
  // A click on Reject without a reason asks for one too, instead of sending a reject the server will refuse.
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest('#review-card button[name="decision"][value="reject"]');
    if (!button) return;
    var reason = pickedReason();
    if (!reason || (reason.value === OTHER && !otherWords())) {
      event.preventDefault();
      event.stopPropagation();
      askForReason(true);
      if (reason) focusOther();
    }
  }, true);
  document.getElementById("show-keys").addEventListener("click", function () {
    document.getElementById("keys").showModal();
  });
  // A picked reason leaves its radio button, so the next key goes to the page; a mouse-picked reason answers
  // a waiting reject as a digit would.
  document.addEventListener("change", function (event) {
    if (!(event.target.matches && event.target.matches('#review-card input[name="reason"]'))) return;
    event.target.blur();
    if (event.target.value === OTHER) focusOther();
    else if (awaitingReason) reject();
  });
  // A refused decision (400) or one on an item that is no longer the SME's (409: another tab decided it,
  // the lease went to another SME) answers with a card that says why and shows their current item.
  // htmx swaps only 2xx answers unless told; swap those cards in as answers, not as errors.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var status = event.detail.xhr && event.detail.xhr.status;
    var target = event.detail.target;
    if ((status === 400 || status === 409) && target && target.id === "review-card" &&
        /^\s*<section id="review-card"/.test(event.detail.serverResponse || "")) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
  // After a swap, keys go to the new card, not to a text box of the old one; no reject waits any more.
  document.addEventListener("htmx:afterSwap", function () {
    awaitingReason = false;
    if (card()) card().focus({ preventScroll: true });
  });
  // Guard against double submits while a decision is in flight.
  document.addEventListener("htmx:beforeRequest", function (event) {
    if (event.target.closest && event.target.closest("#review-card")) {
      card().querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    }
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (!event.detail.successful && card()) {
      card().querySelectorAll("button").forEach(function (b) { b.disabled = false; });
      var alert = card().querySelector(".error") || document.createElement("p");
      alert.className = "error";
      alert.setAttribute("role", "alert");
      alert.textContent = event.detail.xhr && event.detail.xhr.status
        ? "The server could not store that (HTTP " + event.detail.xhr.status + "). Nothing was lost: try the key again."
        : "The server could not be reached. Nothing was stored: try the key again.";
      if (!alert.parentNode) card().prepend(alert);
    }
  });
})();
