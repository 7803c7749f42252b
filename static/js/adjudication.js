// Keyboard-first adjudication: a accept, r reject, c note, n next, p previous, x context, / search, Esc leaves a box.
(function () {
  function typing(target) {
    return target && target.closest && target.closest("input, textarea, select, [contenteditable]");
  }
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && typing(event.target)) { event.target.blur(); return; }
    if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    var card = document.getElementById("adjudication-card");
    var done = false;
    function click(selector) {
      var el = card && card.querySelector(selector);
      if (el) { el.click(); done = true; }
    }
    if (event.key === "a") click('button[name="decision"][value="accept"]');
    else if (event.key === "r") click('button[name="decision"][value="reject"]');
    else if (event.key === "n") click('a[data-key="n"]');
    else if (event.key === "p") click('a[data-key="p"]');
    else if (event.key === "c") {
      var note = card && card.querySelector('input[name="reason"]');
      if (note) { note.focus(); done = true; }
    } else if (event.key === "x") {
      var context = card && card.querySelector("details.context");
      if (context) { context.open = !context.open; done = true; }
    } else if (event.key === "/") {
      var search = document.querySelector('#adjudication-filters input[name="q"]');
      if (search) { search.focus(); search.select(); done = true; }
    }
    if (done) event.preventDefault();
  });
  // Enter in the note would submit with the first button (accept): make it do nothing; a or r decide.
  document.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && event.target.matches && event.target.matches('#adjudicate input[name="reason"]')) {
      event.preventDefault();
      event.target.blur();
    }
  });
})();
