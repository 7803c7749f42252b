// Keyboard shortcuts for the review screen: a = accept, r = reject with the chosen reason.
// Keys typed into a form field are left alone.
(function () {
  function typing(target) {
    return target && target.closest && target.closest("input, textarea, [contenteditable]");
  }
  document.addEventListener("keydown", function (event) {
    if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    var card = document.getElementById("review-card");
    if (!card) return;
    var value = { a: "accept", r: "reject" }[event.key];
    if (!value) return;
    var button = card.querySelector('button[name="decision"][value="' + value + '"]');
    if (button && !button.disabled) {
      event.preventDefault();
      // A card swapped in a moment ago may not be wired to htmx yet; without this a
      // fast key would submit the form as a full page load.
      if (window.htmx) window.htmx.process(card);
      button.click();
    }
  });
  // Leave a picked reason so that the next key goes to the page, not the select.
  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches("#review-card select")) event.target.blur();
  });
  // Guard against double submits while a decision is in flight.
  document.addEventListener("htmx:beforeRequest", function (event) {
    event.target.querySelectorAll && event.target.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
  });
})();
document.addEventListener("htmx:afterRequest", function (event) {
  if (!event.detail.successful && event.target.querySelectorAll) {
    event.target.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
  }
});
