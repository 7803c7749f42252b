// Keyboard-first review: a accept, r reject, 1-9 reason, s skip, u undo, c comment, ? keys, Esc leaves a text box.
(function () {
  function typing(target) {
    return target && target.closest && target.closest("input[type=text], textarea, [contenteditable]");
  }
  function card() { return document.getElementById("review-card"); }
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
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && typing(event.target)) {
      event.target.blur();
      if (card()) card().focus();
      return;
    }
    if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    var keys = document.getElementById("keys");
    if (event.key === "?") {
      event.preventDefault();
      if (keys.open) keys.close(); else keys.showModal();
      return;
    }
    if (keys && keys.open) return;
    var root = card();
    if (!root) return;
    var done = false;
    if (event.key === "a") done = press('button[name="decision"][value="accept"]');
    else if (event.key === "r") done = press('button[name="decision"][value="reject"]');
    else if (event.key === "s") done = press('button[data-key="s"]');
    else if (event.key === "u") done = press('button[data-key="u"]');
    else if (event.key === "c") {
      var comment = root.querySelector('textarea[name="comment"]');
      if (comment) { comment.focus(); done = true; }
    } else if (/^[1-9]$/.test(event.key)) {
      var radio = root.querySelectorAll('input[name="reason"]')[Number(event.key) - 1];
      if (radio) { radio.checked = true; done = true; }
    }
    if (done) event.preventDefault();
  });
  document.getElementById("show-keys").addEventListener("click", function () {
    document.getElementById("keys").showModal();
  });
  // A picked reason leaves its radio button, so the next key goes to the page.
  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches('#review-card input[type="radio"]')) event.target.blur();
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
  // After a swap, keys go to the new card, not to a text box of the old one.
  document.addEventListener("htmx:afterSwap", function () { if (card()) card().focus({ preventScroll: true }); });
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
