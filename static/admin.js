/* surepush admin dashboard: kept live by surepush's own push. The server publishes a
 * statistics snapshot to the topic surepush.admin/stats while anyone follows it; this page
 * follows it with /surepush.js (so it gets the same canary and fallbacks as any client).
 * Servers that cannot mint tokens (RS256/ES256) are polled instead. Plain ES5, no deps. */
(function () {
  'use strict';
  var WINDOW = 150; // snapshots on the chart
  var points = [];  // {t, published, delivered}
  var $ = function (id) { return document.getElementById(id); };

  function readJson(id) {
    var el = $(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  function group(n) {
    return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ' ');
  }

  function bytes(n) {
    var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return i === 0 ? n + ' B' : n.toFixed(1) + ' ' + u[i];
  }

  function setText(id, text) {
    var el = $(id);
    if (el && el.textContent !== String(text)) el.textContent = text;
  }

  function fillTable(id, rows, emptyId) {
    var table = $(id);
    if (!table) return;
    var body = table.tBodies[0];
    while (body.firstChild) body.removeChild(body.firstChild);
    for (var i = 0; i < rows.length; i++) {
      var tr = document.createElement('tr');
      for (var j = 0; j < rows[i].length; j++) {
        var td = document.createElement('td');
        var cell = rows[i][j];
        if (typeof cell === 'number') { td.className = 'num'; cell = group(cell); }
        td.textContent = cell;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    var empty = $(emptyId);
    if (empty) empty.hidden = rows.length > 0;
  }

  function addPoint(s) {
    var last = points[points.length - 1];
    if (last && s.time_ms <= last.t) return;
    points.push({ t: s.time_ms, published: s.published, delivered: s.delivered });
    if (points.length > WINDOW + 1) points.shift();
  }

  function rates() {
    var out = [];
    for (var i = 1; i < points.length; i++) {
      var a = points[i - 1], b = points[i];
      var dt = (b.t - a.t) / 1000;
      // counters restart with the server: never draw a negative rate
      if (dt <= 0) continue;
      out.push({
        t: b.t,
        pub: Math.max(0, b.published - a.published) / dt,
        del: Math.max(0, b.delivered - a.delivered) / dt
      });
    }
    return out;
  }

  function drawChart() {
    var svg = $('chart');
    if (!svg) return;
    var NS = 'http://www.w3.org/2000/svg';
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var r = rates();
    // the viewBox follows the drawn width, so labels are not stretched with the lines
    var W = Math.round(svg.getBoundingClientRect().width) || 600, H = 160, top = 14, bottom = 150;
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    var max = 1;
    for (var i = 0; i < r.length; i++) max = Math.max(max, r[i].pub, r[i].del);
    for (var g = 0; g <= 2; g++) {
      var y = top + (bottom - top) * g / 2;
      var line = document.createElementNS(NS, 'line');
      line.setAttribute('x1', 0); line.setAttribute('x2', W);
      line.setAttribute('y1', y); line.setAttribute('y2', y);
      line.setAttribute('class', 'grid');
      svg.appendChild(line);
      var label = document.createElementNS(NS, 'text');
      label.setAttribute('x', 4); label.setAttribute('y', y - 2);
      label.textContent = (max * (2 - g) / 2).toFixed(max < 10 ? 1 : 0) + '/s';
      svg.appendChild(label);
    }
    if (r.length < 1) return;
    var t0 = r[0].t, t1 = r[r.length - 1].t, span = Math.max(1, t1 - t0);
    ['pub', 'del'].forEach(function (k) {
      var d = '';
      for (var i = 0; i < r.length; i++) {
        var x = r.length === 1 ? W : (r[i].t - t0) / span * W;
        var yv = bottom - (r[i][k] / max) * (bottom - top);
        d += (i ? 'L' : 'M') + x.toFixed(1) + ' ' + yv.toFixed(1);
      }
      var path = document.createElementNS(NS, 'path');
      path.setAttribute('d', d);
      path.setAttribute('class', k);
      svg.appendChild(path);
    });
    var lastRate = r[r.length - 1];
    setText('published-rate', lastRate.pub.toFixed(1) + ' /s');
    setText('delivered-rate', lastRate.del.toFixed(1) + ' /s');
  }

  function apply(s) {
    if (!s || typeof s !== 'object') return;
    setText('subscribers', s.subscribers);
    setText('published', group(s.published));
    setText('delivered', group(s.delivered));
    setText('storage', bytes(s.storage_bytes));
    setText('head', s.head_id);
    setText('retention-deleted', s.retention_deleted);
    setText('storage-now', bytes(s.storage_bytes));
    setText('segments', s.storage_segments);
    setText('disk-free', s.disk_free_bytes == null ? 'unknown' : bytes(s.disk_free_bytes));
    var unmet = document.getElementById('budget-unmet');
    if (unmet) unmet.hidden = !s.budget_unmet;
    setText('slow', s.slow_consumer_disconnects);
    var NAMES = { sse_stream: 'SSE stream', sse_close: 'SSE close', longpoll: 'long poll', poll: 'poll' };
    fillTable('connections', (s.connections || []).map(function (c) {
      return [NAMES[c.transport] || c.transport, c.http, c.count];
    }), 'connections-empty');
    fillTable('fallbacks', (s.fallbacks || []).map(function (f) {
      return [f.reason, f.count];
    }), 'fallbacks-empty');
    fillTable('queues', (s.queues || []).map(function (q) {
      return [q.queue, q.queued, q.leased, q.dead];
    }), 'queues-empty');
    addPoint(s);
    drawChart();
    document.body.setAttribute('data-updated', String(s.time_ms));
  }

  function badge(text, cls) {
    var b = $('live');
    if (!b) return;
    b.textContent = text;
    b.className = 'badge ' + (cls || '');
  }

  function poll() {
    badge('polling', 'warn');
    var tick = function () {
      var x = new XMLHttpRequest();
      x.open('GET', '/admin/api/stats');
      x.onload = function () {
        if (x.status === 200) { try { apply(JSON.parse(x.responseText)); } catch (e) {} }
        else if (x.status === 401) { location.href = '/admin/login?next=/admin/'; }
      };
      x.send();
    };
    setInterval(tick, 2000);
  }

  function getToken(cb) {
    var x = new XMLHttpRequest();
    x.open('GET', '/admin/api/stream-token');
    x.onload = function () {
      if (x.status === 401) { location.href = '/admin/login?next=/admin/'; return; }
      var body = null;
      try { body = JSON.parse(x.responseText); } catch (e) {}
      cb(x.status === 200 ? body : null);
    };
    x.onerror = function () { cb(null); };
    x.send();
  }

  function start() {
    var history = readJson('stats-history') || [];
    var lastId = null;
    for (var i = 0; i < history.length; i++) {
      if (history[i] && history[i].data) addPoint(history[i].data);
      lastId = history[i].id;
    }
    apply(readJson('stats-now'));
    if (!window.SurePush) { poll(); return; }
    getToken(function (info) {
      if (!info || info.mode !== 'push') { poll(); return; }
      var token = info.token;
      var sub = window.SurePush.subscribe(location.origin, {
        topics: [info.topic],
        token: function () { return token; },
        types: ['stats'],
        since: lastId,
        onEvent: function (ev) { if (ev.type === 'stats') apply(ev.data); },
        onStatus: function (st) {
          if (st.state === 'connected') badge('live · ' + st.transport, 'ok');
          else badge(st.state || st.event, 'warn');
        },
        onError: function () { poll(); }
      });
      if (info.token && info.expires_in) {
        setInterval(function () {
          getToken(function (fresh) {
            if (fresh && fresh.token) { token = fresh.token; sub.setToken(fresh.token); }
          });
        }, info.expires_in * 800);
      }
    });
  }

  var resizing = null;
  window.addEventListener('resize', function () {
    clearTimeout(resizing);
    resizing = setTimeout(drawChart, 100);
  });

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
