// Filters the computers as one types. Without JavaScript the same form is a GET that the
// server applies (q, role): the matching here is the server's (pages/landing.py searchable).
(function () {
  "use strict";
  var form = document.getElementById("filter");
  if (!form) { return; }
  var text = form.elements.namedItem("q");
  var role = form.elements.namedItem("role");
  var shown = document.getElementById("shown");
  var rows = Array.prototype.slice.call(document.querySelectorAll("table.computers tbody tr"));
  var CELLS = [0, 1, 2, 3, 6]; // name, status, problems, role, VMM state
  var haystacks = rows.map(function (row) {
    return CELLS.map(function (i) { return row.cells[i].textContent; }).join(" ").toLowerCase();
  });
  var roles = rows.map(function (row) { return row.cells[3].textContent; });
  var total = rows.length;

  function apply() {
    var wanted = text.value.trim().toLowerCase();
    var chosen = role.value;
    var count = 0;
    rows.forEach(function (row, i) {
      var match = (!chosen || roles[i] === chosen) && haystacks[i].indexOf(wanted) !== -1;
      row.hidden = !match;
      if (match) { count += 1; }
    });
    document.querySelectorAll("table.computers").forEach(function (table) {
      var visible = table.querySelector("tbody tr:not([hidden])");
      table.hidden = !visible;
      var details = table.closest("details");
      if (details && (wanted || chosen)) { details.open = Boolean(visible); }
    });
    if (shown) { shown.textContent = count + " of " + total + " rows on this page match."; }
    var params = new URLSearchParams(window.location.search);
    if (wanted) { params.set("q", text.value.trim()); } else { params.delete("q"); }
    if (chosen) { params.set("role", chosen); } else { params.delete("role"); }
    var search = params.toString();
    window.history.replaceState(null, "", search ? "?" + search : window.location.pathname);
  }

  text.addEventListener("input", apply);
  role.addEventListener("change", apply);
}());
