/* The site's own script: sort a table.sortable by clicking a header, and filter the overview (form#filters): the
   mode and family selects choose the rows and so the marks (each cell's data-marks holds its mark for every choice
   of them, in the order of the form's data-choices: b best, t tied, o open, . none), the task and fraction selects the
   columns; the search box narrows the rows shown by name and leaves the marks.
   A cell sorts by its data-v attribute where it has one, else by its text; a column whose every non-empty cell
   reads as a number (k, M, G, s, min, h units included) sorts as numbers, empty cells ("", "-") always last. */
(function () {
  "use strict";
  var UNITS = { k: 1e3, M: 1e6, G: 1e9, s: 1, min: 60, h: 3600 };
  var NUMBER = /^([+-]?\d[\d,]*(?:\.\d+)?(?:e[+-]?\d+)?)\s*(k|M|G|s|min|h)?(?:\s|$)/;

  function raw(cell) {
    if (!cell) return "";
    var v = cell.getAttribute("data-v");
    return (v === null ? cell.textContent : v).trim();
  }

  function asNumber(text) {
    var m = NUMBER.exec(text);
    return m ? parseFloat(m[1].replace(/,/g, "")) * (m[2] ? UNITS[m[2]] : 1) : NaN;
  }

  function sortBy(th) {
    var table = th.closest("table"), body = table.tBodies[0], col = th.cellIndex;
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    var keys = rows.map(function (r) { return raw(r.cells[col]); });
    var empty = keys.map(function (k) { return k === "" || k === "-"; });
    var nums = keys.map(asNumber);
    var numeric = keys.every(function (k, i) { return empty[i] || !isNaN(nums[i]); });
    var order = rows.map(function (_, i) { return i; });
    order.sort(function (a, b) {
      if (empty[a] !== empty[b]) return empty[a] ? 1 : -1;
      var c = numeric ? nums[a] - nums[b] : keys[a].localeCompare(keys[b], undefined, { numeric: true });
      return (ascending ? c : -c) || a - b;
    });
    var frag = document.createDocumentFragment();
    order.forEach(function (i) { frag.appendChild(rows[i]); });
    body.appendChild(frag);
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  var MARKS = { b: ["best", " ★"], t: ["tied", " ≈"], o: ["open", " ?"] };

  function remark(table, choice) {
    Array.prototype.forEach.call(table.querySelectorAll("td[data-marks]"), function (cell) {
      var m = MARKS[cell.getAttribute("data-marks").charAt(choice)] || ["", ""];
      cell.classList.toggle("best", m[0] === "best");
      cell.classList.toggle("tied", m[0] === "tied");
      cell.classList.toggle("open", m[0] === "open");
      var label = cell.querySelector(".mark");
      if (label) label.textContent = m[1];
    });
  }

  function applyFilters(form) {
    var table = document.getElementById(form.getAttribute("data-table"));
    var f = {};
    Array.prototype.forEach.call(form.querySelectorAll("select"), function (s) { f[s.name] = s.value; });
    var q = (form.querySelector("input[name=q]") || { value: "" }).value.trim().toLowerCase();
    var shown = 0, rows = table.tBodies[0].rows;
    Array.prototype.forEach.call(rows, function (row) {
      var hide = (f.mode && row.getAttribute("data-mode") !== f.mode) ||
                 (f.family && row.getAttribute("data-family") !== f.family) ||
                 (q && row.cells[0].textContent.toLowerCase().indexOf(q) < 0);
      row.hidden = !!hide;
      if (!hide) shown++;
    });
    Array.prototype.forEach.call(table.querySelectorAll("[data-task]"), function (c) {
      c.hidden = !!((f.task && c.getAttribute("data-task") !== f.task) || (f.end && c.getAttribute("data-end") !== f.end));
    });
    Array.prototype.forEach.call(document.querySelectorAll(".figure[data-task]"), function (fig) {
      fig.hidden = !!(f.task && fig.getAttribute("data-task") !== f.task);
    });
    var choices = JSON.parse(form.getAttribute("data-choices") || "[]");
    var choice = choices.indexOf((f.mode || "") + "|" + (f.family || ""));
    if (choice >= 0) remark(table, choice);
    var counter = document.getElementById("shown");
    if (counter) counter.textContent = shown + " of " + rows.length + " rows";
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable thead th"), function (th) {
      th.addEventListener("click", function () { sortBy(th); });
    });
    var form = document.getElementById("filters");
    if (form) {
      form.addEventListener("change", function () { applyFilters(form); });
      form.addEventListener("input", function () { applyFilters(form); });
      form.addEventListener("submit", function (e) { e.preventDefault(); });
      applyFilters(form);
    }
  });
})();
