// slmbench report: sortable tables, the model-vs-model diff and the sample
// explorer. Plain JavaScript, no network. Every piece of data text reaches
// the page through textContent, never as markup.
(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('slm-data').textContent);
  var PAGE = 100;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function option(select, value, text) {
    var o = el('option', text);
    o.value = String(value);
    select.appendChild(o);
  }
  function $(id) { return document.getElementById(id); }

  // ---- sortable tables: click a header; empty cells sort last ----
  function sortTable(table, th, col) {
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    var heads = table.tHead.rows[0].cells;
    for (var h = 0; h < heads.length; h++) heads[h].removeAttribute('aria-sort');
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    function key(r) {
      var c = r.cells[col];
      if (!c) return null;
      var v = c.getAttribute('data-sort');
      if (v === null) return c.textContent.trim().toLowerCase();
      if (v === '') return null;
      var f = parseFloat(v);
      return isNaN(f) ? v.toLowerCase() : f;
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      var d = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
      return asc ? d : -d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll('table.sortable'), function (t) {
    Array.prototype.forEach.call(t.tHead.rows[0].cells, function (th, i) {
      th.tabIndex = 0;
      th.title = 'sort';
      th.addEventListener('click', function () { sortTable(t, th, i); });
      th.addEventListener('keydown', function (e) { if (e.key === 'Enter') sortTable(t, th, i); });
    });
  });

  // ---- data access ----
  var cellAt = {};
  D.cells.forEach(function (c) { cellAt[c.t + ':' + c.m] = c; });
  function cell(t, m) { return cellAt[t + ':' + m]; }
  function isRight(c, i) { var v = c.ok[i]; return v === null || v === undefined ? null : v > 0.5; }

  function fillModels(select, withAll) {
    if (withAll) option(select, -1, 'all models');
    D.models.forEach(function (m, k) { option(select, k, m); });
  }

  // ---- one document, every model ----
  function showDoc(t, i) {
    var task = D.tasks[t];
    var box = $('ex-doc');
    box.textContent = '';
    box.appendChild(el('h3', task.name + ' / document ' + task.ids[i]));
    box.appendChild(el('h4', 'Prompt'));
    box.appendChild(el('pre', task.ctx[i]));
    var models = D.models.map(function (_, m) { return m; }).filter(function (m) { return cell(t, m); });
    var tbl = el('table', null, 'doc');
    var head = el('tr');
    if (task.gen) {
      box.appendChild(el('p', 'Target: ' + task.gold[i]));
      ['model', 'generation', 'extracted', 'result'].forEach(function (h) { head.appendChild(el('th', h)); });
      tbl.appendChild(head);
      models.forEach(function (m) {
        var c = cell(t, m);
        var r = el('tr');
        r.appendChild(el('td', D.models[m]));
        var g = el('td'); g.appendChild(el('pre', c.gen[i])); r.appendChild(g);
        r.appendChild(el('td', c.ext[i]));
        var ok = isRight(c, i);
        r.appendChild(el('td', ok === null ? 'n/a' : ok ? 'right' : 'wrong', ok ? 'right' : 'wrong'));
        tbl.appendChild(r);
      });
    } else {
      head.appendChild(el('th', 'choice'));
      models.forEach(function (m) { head.appendChild(el('th', D.models[m] + ' log-likelihood')); });
      tbl.appendChild(head);
      task.ch[i].forEach(function (choice, k) {
        var r = el('tr', null, k === task.gold[i] ? 'gold' : '');
        var td = el('td');
        td.appendChild(el('pre', choice));
        if (k === task.gold[i]) td.appendChild(el('span', 'gold', 'tag'));
        r.appendChild(td);
        models.forEach(function (m) {
          var c = cell(t, m);
          var ll = c.ll && c.ll[i] ? c.ll[i][k] : null;
          var txt = ll === null || ll === undefined ? 'n/a' : ll.toFixed(3);
          var d = el('td', txt, 'num');
          if (c.pred[i] === k) { d.appendChild(el('span', 'predicted', 'tag')); d.className += ' picked'; }
          r.appendChild(d);
        });
        tbl.appendChild(r);
      });
    }
    box.appendChild(tbl);
    box.hidden = false;
    box.setAttribute('data-doc', task.name + ':' + task.ids[i]);
  }

  // ---- the explorer ----
  var exTask = $('ex-task'), exModel = $('ex-model'), exOutcome = $('ex-outcome');
  var exA = $('ex-a'), exB = $('ex-b'), exSearch = $('ex-search');
  option(exTask, -1, 'all tasks');
  D.tasks.forEach(function (t, k) { option(exTask, k, t.name); });
  fillModels(exModel, true);
  fillModels(exA, false);
  fillModels(exB, false);
  if (D.models.length > 1) exB.value = '1';
  var matches = [], shown = 0;

  function describe(t, i, m) {
    var task = D.tasks[t], c = cell(t, m);
    if (task.gen) return c.ext[i];
    var p = c.pred[i];
    return p === null || p === undefined ? 'n/a' : task.ch[i][p];
  }
  function goldText(t, i) {
    var task = D.tasks[t];
    return task.gen ? task.gold[i] : task.ch[i][task.gold[i]];
  }

  function filter() {
    var out = [];
    var ts = +exTask.value, ms = +exModel.value, outcome = exOutcome.value;
    var q = exSearch.value.trim().toLowerCase();
    var a = +exA.value, b = +exB.value;
    D.tasks.forEach(function (task, t) {
      if (ts >= 0 && ts !== t) return;
      var hit = function (i) { return !q || task.ctx[i].toLowerCase().indexOf(q) >= 0; };
      if (outcome === 'flipped') {
        var ca = cell(t, a), cb = cell(t, b);
        if (!ca || !cb || a === b) return;
        for (var i = 0; i < task.ids.length; i++) {
          var x = isRight(ca, i), y = isRight(cb, i);
          if (x === null || y === null || x === y || !hit(i)) continue;
          out.push([t, i, -1]);
        }
        return;
      }
      D.models.forEach(function (_, m) {
        if (ms >= 0 && ms !== m) return;
        var c = cell(t, m);
        if (!c) return;
        for (var i = 0; i < task.ids.length; i++) {
          var r = isRight(c, i);
          if (r === null) continue;
          if (outcome === 'right' && !r) continue;
          if (outcome === 'wrong' && r) continue;
          if (!hit(i)) continue;
          out.push([t, i, m]);
        }
      });
    });
    return out;
  }

  function row(hit) {
    var t = hit[0], i = hit[1], m = hit[2];
    var task = D.tasks[t];
    var tr = el('tr');
    tr.appendChild(el('td', task.name));
    var id = el('td', task.ids[i], 'num');
    id.setAttribute('data-sort', task.ids[i]);
    tr.appendChild(id);
    if (m < 0) {
      var a = +exA.value, b = +exB.value;
      var ra = isRight(cell(t, a), i);
      tr.appendChild(el('td', (ra ? D.models[a] : D.models[b]) + ' right, ' + (ra ? D.models[b] : D.models[a]) + ' wrong'));
      tr.appendChild(el('td', goldText(t, i)));
      tr.appendChild(el('td', D.models[a] + ': ' + describe(t, i, a) + ' | ' + D.models[b] + ': ' + describe(t, i, b)));
      tr.appendChild(el('td', 'flipped'));
    } else {
      var r = isRight(cell(t, m), i);
      tr.appendChild(el('td', D.models[m]));
      tr.appendChild(el('td', goldText(t, i)));
      tr.appendChild(el('td', describe(t, i, m)));
      tr.appendChild(el('td', r ? 'right' : 'wrong', r ? 'right' : 'wrong'));
    }
    tr.tabIndex = 0;
    tr.className += ' doc-row';
    tr.addEventListener('click', function () { showDoc(t, i); });
    tr.addEventListener('keydown', function (e) { if (e.key === 'Enter') showDoc(t, i); });
    return tr;
  }

  function more() {
    var body = $('ex-rows');
    var end = Math.min(matches.length, shown + PAGE);
    var frag = document.createDocumentFragment();
    for (var k = shown; k < end; k++) frag.appendChild(row(matches[k]));
    body.appendChild(frag);
    shown = end;
    $('ex-more').hidden = shown >= matches.length;
    $('ex-shown').textContent = String(shown);
  }

  function apply() {
    var flipped = exOutcome.value === 'flipped';
    exA.disabled = exB.disabled = !flipped;
    exModel.disabled = flipped;
    matches = filter();
    shown = 0;
    $('ex-rows').textContent = '';
    $('ex-count').textContent = String(matches.length);
    more();
  }
  [exTask, exModel, exOutcome, exA, exB].forEach(function (s) { s.addEventListener('change', apply); });
  exSearch.addEventListener('input', apply);
  $('ex-more').addEventListener('click', more);

  // ---- the diff of two models ----
  var dA = $('diff-a'), dB = $('diff-b');
  fillModels(dA, false);
  fillModels(dB, false);
  if (D.models.length > 1) dB.value = '1';
  function docLinks(t, list) {
    var td = el('td');
    var shownIds = list.slice(0, 40);
    shownIds.forEach(function (i, k) {
      var btn = el('button', D.tasks[t].ids[i], 'link');
      btn.type = 'button';
      btn.addEventListener('click', function () {
        showDoc(t, i);
        $('ex-doc').scrollIntoView();
      });
      td.appendChild(btn);
      if (k + 1 < shownIds.length) td.appendChild(document.createTextNode(' '));
    });
    if (list.length > shownIds.length) td.appendChild(el('span', ' … and ' + (list.length - shownIds.length) + ' more (the explorer lists them all)'));
    return td;
  }
  function diff() {
    var a = +dA.value, b = +dB.value;
    var body = $('diff-rows');
    body.textContent = '';
    D.tasks.forEach(function (task, t) {
      var ca = cell(t, a), cb = cell(t, b);
      var tr = el('tr');
      tr.appendChild(el('td', task.name));
      if (!ca || !cb || a === b) {
        var td = el('td', a === b ? 'choose two different models' : 'not run by both');
        td.colSpan = 5;
        tr.appendChild(td);
        body.appendChild(tr);
        return;
      }
      var aOnly = [], bOnly = [], n = 0;
      for (var i = 0; i < task.ids.length; i++) {
        var x = isRight(ca, i), y = isRight(cb, i);
        if (x === null || y === null) continue;
        n++;
        if (x && !y) aOnly.push(i);
        if (!x && y) bOnly.push(i);
      }
      tr.appendChild(el('td', n, 'num'));
      tr.appendChild(el('td', aOnly.length, 'num a-only'));
      tr.appendChild(docLinks(t, aOnly));
      tr.appendChild(el('td', bOnly.length, 'num b-only'));
      tr.appendChild(docLinks(t, bOnly));
      body.appendChild(tr);
    });
    $('diff-head-a').textContent = D.models[a] + ' right, ' + D.models[b] + ' wrong';
    $('diff-head-b').textContent = D.models[a] + ' wrong, ' + D.models[b] + ' right';
  }
  dA.addEventListener('change', diff);
  dB.addEventListener('change', diff);

  apply();
  diff();
  document.documentElement.setAttribute('data-rendered', String(document.querySelectorAll('figure.chart svg').length));
  document.documentElement.setAttribute('data-ready', '1');
})();
