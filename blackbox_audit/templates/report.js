"use strict";
// blackbox-audit report: filter, sort and page the ranked rows from the JSON block.
// Model text is only ever written with textContent / setAttribute, never parsed as HTML.
(function () {
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var ROWS = DATA.rows;
  // Rows carried as numbers only (a large run: report.py page_rows), in columns.
  var L = DATA.lite;
  if (L) {
    for (var li = 0; li < L.id.length; li++) {
      var grp = L.groups[L.g[li]];
      var lr = { id: L.id[li], corpus: grp[0], framing: grp[1], rank: L.rank[li],
                 n: L.n[li], finish: L.finishes[L.finish[li]] || null, prefill: null,
                 text: null, tok: null, lite: true,
                 flag: L.flag ? L.flag[li] === 1 : null };
      for (var sj = 0; sj < DATA.scores.length; sj++) {
        lr[DATA.scores[sj]] = L[DATA.scores[sj]][li];
      }
      if (L.dup[li]) { lr.dup = L.dup[li]; }
      if (L.th[li]) { lr.th = L.th[li]; }
      if (L.round && L.round[li]) { lr.round = L.round[li]; }
      ROWS.push(lr);
    }
  }
  var $ = function (id) { return document.getElementById(id); };
  var state = { corpus: "", framing: "", flag: "", text: "", sort: "rank", desc: false,
                heat: true, page: 0, size: 50, theme: null };
  var view = ROWS;
  var searchable = null;   // lower-cased id + prefill + text, built on the first search

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }

  function num(v, digits) {
    if (v === null || v === undefined) { return "\u2013"; }
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) { return v.toExponential(2); }
    return v.toFixed(digits === undefined ? 2 : digits);
  }

  function filtered() {
    var q = state.text.toLowerCase();
    if (q && searchable === null) {
      searchable = ROWS.map(function (r) {
        return (r.id + "\n" + (r.prefill || "") + "\n" + (r.text || "")).toLowerCase();
      });
    }
    var out = [];
    for (var i = 0; i < ROWS.length; i++) {
      var r = ROWS[i];
      if (state.corpus && r.corpus !== state.corpus) { continue; }
      if (state.framing && r.framing !== state.framing) { continue; }
      if (state.flag && (r.flag ? "1" : "0") !== state.flag) { continue; }
      if (q && searchable[i].indexOf(q) < 0) { continue; }
      if (state.theme && (r.corpus + "|" + r.framing !== state.theme.group ||
                          !r.th || r.th.indexOf(state.theme.index) < 0)) { continue; }
      out.push(r);
    }
    var k = state.sort, sign = state.desc ? -1 : 1;
    out.sort(function (a, b) {
      var x = a[k], y = b[k];
      if (x === null || x === undefined) { return (y === null || y === undefined) ? 0 : 1; }
      if (y === null || y === undefined) { return -1; }
      if (x !== y) { return sign * (x < y ? -1 : 1); }
      if (a.rank !== b.rank) { return a.rank - b.rank; }
      return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
    });
    return out;
  }

  function heatColour(gap) {
    // gap = logprob_target - logprob_ref (nats); saturates at 8 nats.
    var a = Math.min(Math.abs(gap) / 8, 1) * 0.75;
    if (a < 0.03) { return ""; }
    return gap > 0 ? "rgba(230,90,20," + a.toFixed(2) + ")"
                   : "rgba(40,100,220," + a.toFixed(2) + ")";
  }

  function textCell(r) {
    var td = el("td", "text");
    if (r.lite) {
      td.appendChild(el("span", "muted", "numbers only in this report: blackbox-audit " +
        "report RUN --row " + r.id + " shows it whole (or see ranked.jsonl)"));
      return td;
    }
    var pre = el("span", "prefill", r.prefill);
    pre.setAttribute("title", "prefill: our prompt, not the model's text");
    td.appendChild(pre);
    var tok = r.tok;
    if (!state.heat || !tok) {
      td.appendChild(el("span", "completion", r.text));
      return td;
    }
    var wrap = el("span", "completion heat");
    var pos = 0;
    for (var i = 0; i < tok.l.length; i++) {
      var piece = r.text.substr(pos, tok.l[i]);
      pos += tok.l[i];
      var s = el("span", "tok", piece);
      var gap = tok.t[i] - tok.r[i];
      var c = heatColour(gap);
      if (c) { s.style.backgroundColor = c; }
      s.setAttribute("data-tip", JSON.stringify(piece) + "\nlogprob ref " + tok.r[i].toFixed(2) +
        "\nlogprob target " + tok.t[i].toFixed(2) + "\ngap " + (gap >= 0 ? "+" : "") +
        gap.toFixed(2) + (tok.approx ? "\n(approximate token span)" : ""));
      wrap.appendChild(s);
    }
    if (pos < r.text.length) { wrap.appendChild(el("span", "", r.text.substr(pos))); }
    td.appendChild(wrap);
    return td;
  }

  function rowEl(r) {
    var tr = el("tr", r.flag ? "flagged" : "");
    tr.setAttribute("data-id", r.id);
    var rk = el("td", "num", r.rank);
    if (r.dup) { rk.appendChild(el("span", "dup", "\u00d7" + r.dup)); }
    tr.appendChild(rk);
    var g = el("td", "group", r.corpus + " / " + r.framing);
    g.appendChild(el("span", "rowid", r.id));
    if (r.round) { g.appendChild(el("span", "round", "round " + r.round)); }
    tr.appendChild(g);
    if (DATA.has_flag) { tr.appendChild(el("td", "flagmark", r.flag ? "\u2605" : "")); }
    for (var j = 0; j < DATA.scores.length; j++) {
      tr.appendChild(el("td", "num", num(r[DATA.scores[j]])));
    }
    tr.appendChild(el("td", "num", r.n));
    tr.appendChild(textCell(r));
    return tr;
  }

  function render() {
    var pages = Math.max(1, Math.ceil(view.length / state.size));
    state.page = Math.min(Math.max(state.page, 0), pages - 1);
    var lo = state.page * state.size, hi = Math.min(lo + state.size, view.length);
    var frag = document.createDocumentFragment();
    for (var i = lo; i < hi; i++) { frag.appendChild(rowEl(view[i])); }
    $("tbody").replaceChildren(frag);
    $("count").textContent = view.length + " of " + ROWS.length + " rows match";
    $("p-info").textContent = view.length ? ("rows " + (lo + 1) + "\u2013" + hi +
      ", page " + (state.page + 1) + " of " + pages) : "no rows";
    var ths = document.querySelectorAll("th.sortable");
    for (var k = 0; k < ths.length; k++) {
      var th = ths[k];
      th.classList.remove("sorted-asc", "sorted-desc");
      if (th.getAttribute("data-sort") === state.sort) {
        th.classList.add(state.desc ? "sorted-desc" : "sorted-asc");
      }
    }
    document.body.setAttribute("data-rendered", String(hi - lo));
  }

  function refilter() { view = filtered(); state.page = 0; render(); }

  // Token numbers on hover: one floating box, filled with textContent.
  var tip = $("tip");
  $("tbody").addEventListener("mouseover", function (ev) {
    var t = ev.target;
    if (!t.classList || !t.classList.contains("tok")) { tip.hidden = true; return; }
    tip.textContent = t.getAttribute("data-tip");
    var box = t.getBoundingClientRect();
    tip.style.left = Math.max(4, Math.min(box.left, window.innerWidth - 260)) + "px";
    tip.style.top = (box.bottom + 6) + "px";
    tip.hidden = false;
  });
  $("tbody").addEventListener("mouseleave", function () { tip.hidden = true; });

  function bind(id, key, ev, read) {
    var e = $(id);
    if (!e) { return; }
    e.addEventListener(ev, function () { state[key] = read(e); refilter(); });
  }
  var value = function (e) { return e.value; };
  bind("f-corpus", "corpus", "change", value);
  bind("f-framing", "framing", "change", value);
  bind("f-flag", "flag", "change", value);
  bind("f-text", "text", "input", value);
  bind("f-sort", "sort", "change", value);
  bind("f-desc", "desc", "change", function (e) { return e.checked; });
  $("f-heat").addEventListener("change", function () {
    state.heat = $("f-heat").checked; render();
  });
  $("p-size").addEventListener("change", function () {
    state.size = parseInt($("p-size").value, 10); state.page = 0; render();
  });
  $("p-first").addEventListener("click", function () { state.page = 0; render(); });
  $("p-prev").addEventListener("click", function () { state.page -= 1; render(); });
  $("p-next").addEventListener("click", function () { state.page += 1; render(); });
  $("p-last").addEventListener("click", function () { state.page = 1e9; render(); });
  var ths = document.querySelectorAll("th.sortable");
  for (var i = 0; i < ths.length; i++) {
    ths[i].addEventListener("click", function (ev) {
      var k = ev.currentTarget.getAttribute("data-sort");
      // A click on a score sorts it high to low first; a second click flips it.
      if (state.sort === k) { state.desc = !state.desc; } else { state.desc = k !== "rank"; }
      state.sort = k;
      $("f-sort").value = k;
      $("f-desc").checked = state.desc;
      refilter();
    });
  }
  // Themes: a click shows the rows of that ranking that carry the phrase; again, all rows.
  var buttons = document.querySelectorAll("button.theme");
  function showTheme(btn) {
    for (var b = 0; b < buttons.length; b++) { buttons[b].classList.remove("on"); }
    if (!btn) {
      state.theme = null;
      $("f-theme-clear").hidden = true;
    } else {
      btn.classList.add("on");
      state.theme = { group: btn.getAttribute("data-group"),
                      index: parseInt(btn.getAttribute("data-theme"), 10) };
      $("f-theme-name").textContent = btn.firstChild.textContent.trim();
      $("f-theme-clear").hidden = false;
    }
    refilter();
  }
  for (var t = 0; t < buttons.length; t++) {
    buttons[t].addEventListener("click", function (ev) {
      var btn = ev.currentTarget;
      showTheme(btn.classList.contains("on") ? null : btn);
    });
  }
  $("f-theme-clear").addEventListener("click", function () { showTheme(null); });
  refilter();
})();
