// The items list by keyboard: / search, j/k move between items, x ticks the current one, Enter or o opens it,
// n/p next and previous page, Esc leaves a text box. Delegated to the document, so it keeps working after htmx
// swaps the results in.
(function () {
  var current = -1;
  function typing(target) {
    return target && target.closest && target.closest("input, select, textarea, [contenteditable]");
  }
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("#items-table tbody tr[data-href]")); }
  function move(step) {
    var all = rows();
    if (!all.length) return;
    all.forEach(function (row) { row.classList.remove("current"); row.removeAttribute("aria-current"); });
    current = Math.max(0, Math.min(all.length - 1, current + step));
    all[current].classList.add("current");
    all[current].setAttribute("aria-current", "true");
    all[current].scrollIntoView({ block: "nearest" });
  }
  document.addEventListener("htmx:afterSwap", function () { current = -1; });
  document.addEventListener("change", function (event) {
    if (event.target.id !== "tick-all") return;
    document.querySelectorAll("#items-table tbody input[name=item]").forEach(function (box) {
      box.checked = event.target.checked;
    });
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && typing(event.target)) { event.target.blur(); return; }
    if (event.repeat || event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    var all = rows();
    var row = all[current];
    var link;
    if (event.key === "/") {
      event.preventDefault();
      document.getElementById("item-search").focus();
    } else if (event.key === "j") {
      move(1);
    } else if (event.key === "k") {
      move(current < 0 ? 1 : -1);
    } else if (event.key === "x" && row) {
      var box = row.querySelector("input[name=item]");
      box.checked = !box.checked;
    } else if ((event.key === "Enter" || event.key === "o") && row) {
      event.preventDefault();
      window.location.href = row.getAttribute("data-href");
    } else if (event.key === "n" && (link = document.getElementById("next-page"))) {
      link.click();
    } else if (event.key === "p" && (link = document.getElementById("prev-page"))) {
      link.click();
    }
  });
})();
