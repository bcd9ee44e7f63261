/* The /demo page: one subscription, its transport and why, a publish form, the events.
 * Plain ES5 like surepush.js. State is kept on window.surepushDemo for inspection. */
(function () {
  'use strict';

  var MAX_SHOWN = 200;
  var MAX_KEPT = 20000;

  var REASONS = {
    sse_canary: 'The SSE canary event did not arrive in time: something between this browser and ' +
      'the server holds the stream back (a buffering proxy or scanner). Each SSE response now ' +
      'ends after a batch, which such a box has to deliver.',
    close_canary: 'Neither the SSE stream nor SSE close mode got their canary through, so the ' +
      'client uses long polling: plain requests that any proxy passes.',
    sse_error: 'SSE connections failed while the server answered plain requests.',
    close_error: 'SSE close-mode connections failed while the server answered plain requests.',
    sse_late: 'Heartbeats on the stream arrived late: something started holding it back.',
    sse_bunched: 'Heartbeats on the stream arrived in bunches: something releases it in blocks.',
    sse_stall: 'The stream went silent twice: heartbeats stopped getting through.',
    close_stall: 'SSE close mode went silent twice.',
    no_eventsource: 'This browser has no EventSource, so the client uses long polling.',
    http10: 'The connection reached the server as HTTP/1.0 (a proxy on the way?), which cannot ' +
      'stream: the server ends each response after a batch and the browser reconnects.',
    server_close: 'The server chose close mode for this connection.',
    forced: 'Chosen in the address of this page (transport=...).'
  };

  var $ = function (id) {
    return document.getElementById(id);
  };

  function query() {
    var out = {};
    var parts = window.location.search.replace(/^\?/, '').split('&');
    for (var i = 0; i < parts.length; i++) {
      if (!parts[i]) continue;
      var kv = parts[i].split('=');
      var k = decodeURIComponent(kv[0].replace(/\+/g, ' '));
      var v = decodeURIComponent((kv[1] || '').replace(/\+/g, ' '));
      (out[k] = out[k] || []).push(v);
    }
    return out;
  }

  var q = query();

  function first(k) {
    return q[k] && q[k].length ? q[k][0] : null;
  }

  function num(k) {
    var v = first(k);
    var n = v === null || v === '' ? NaN : Number(v);
    return isNaN(n) ? undefined : n;
  }

  var demo = {
    sub: null,
    received: [],
    statuses: [],
    resets: 0,
    ready: [],
    errors: []
  };
  window.surepushDemo = demo;

  function text(id, value) {
    var el = $(id);
    if (el) el.textContent = value;
  }

  function topicsFromInput() {
    return $('topic').value.split(/[\s,]+/).filter(function (t) {
      return t !== '';
    });
  }

  function remembered(st) {
    return st.transport !== 'sse' && st.reason && st.reason !== 'no_eventsource' &&
      st.reason !== 'forced' && st.reason !== 'http10' && st.reason !== 'server_close';
  }

  function explain(st) {
    if (st.state === 'failed' && st.error) {
      return 'The server refused: ' + st.error.message + ' (' + st.error.code + ').';
    }
    if (st.transport === 'sse' && !st.reason) {
      return 'Plain Server-Sent Events: the stream stays open and events arrive as they ' +
        'happen. The client keeps watching its heartbeats.';
    }
    var why = REASONS[st.reason] || ('Fallback reason: ' + st.reason + '.');
    if (remembered(st)) {
      why += ' Remembered for this site; plain SSE is tried again in the background ' +
        '(periodically and after server restarts) and used again as soon as it works.';
    }
    return why;
  }

  function historyLine(st) {
    switch (st.event) {
      case 'fallback': return 'fell back from ' + st.from + ' to ' + st.to + ' (' + st.reason + ')';
      case 'stepup': return 'stepped up from ' + st.from + ' to ' + st.to;
      case 'probe': return 'probing ' + st.probing + ' in the background';
      case 'probe_failed': return 'probe of ' + st.probed + ' failed (' + st.why + '); staying on ' + st.transport;
      case 'connected': return 'connected with ' + st.transport + (st.reason ? ' (' + st.reason + ')' : '');
      case 'retry': return 'retrying in ' + (st.retryInMs / 1000).toFixed(1) + ' s (' + st.why + ')';
      case 'reset': return 'the server could not resume from the last id: state reset';
      case 'stall': return 'the connection went silent; reconnecting';
      case 'failed': return 'failed: ' + (st.error && st.error.message);
      default: return null;
    }
  }

  function onStatus(st) {
    st.at = new Date().getTime();
    demo.statuses.push(st);
    if (demo.statuses.length > 1000) demo.statuses.shift();
    var badge = $('transport');
    badge.textContent = st.transport || 'none';
    badge.className = 'badge ' + (st.state === 'failed' ? 'failed' : (st.transport || ''));
    text('state', st.state + (st.state === 'retrying' ? ' in ' + (st.retryInMs / 1000).toFixed(1) + ' s' : ''));
    if (st.event === 'connected' || st.event === 'failed') text('why', explain(st));
    var line = historyLine(st);
    if (line) {
      var li = document.createElement('li');
      li.textContent = new Date(st.at).toLocaleTimeString() + '  ' + line;
      var list = $('history');
      list.insertBefore(li, list.firstChild);
      while (list.childNodes.length > 50) list.removeChild(list.lastChild);
    }
  }

  function onEvent(ev) {
    var entry = { id: ev.id, topic: ev.topic, type: ev.type, data: ev.data, time: ev.time, at: new Date().getTime() };
    demo.received.push(entry);
    if (demo.received.length > MAX_KEPT) demo.received.shift();
    text('count', String(demo.sub ? demo.sub.received : demo.received.length));
    text('dups', demo.sub && demo.sub.duplicates ? '(' + demo.sub.duplicates + ' duplicate copies dropped)' : '');
    text('last-id', ev.id);
    $('no-events').style.display = 'none';
    $('curl-hint').style.display = 'none';
    var li = document.createElement('li');
    var head = document.createElement('div');
    head.className = 'meta';
    head.textContent = ev.type + '  on ' + ev.topic + '  #' + ev.id + '  ' + (ev.time || '');
    var body = document.createElement('code');
    body.textContent = JSON.stringify(ev.data);
    li.appendChild(head);
    li.appendChild(body);
    var list = $('events');
    list.insertBefore(li, list.firstChild);
    while (list.childNodes.length > MAX_SHOWN) list.removeChild(list.lastChild);
  }

  var listening = {};

  function listen(type) {
    if (!demo.sub || !type || listening[type]) return;
    listening[type] = true;
    demo.sub.on(type, function () {});
  }

  function start() {
    if (demo.sub) demo.sub.close();
    listening = {};
    var type = $('pub-type').value;
    try {
      demo.sub = SurePush.subscribe('', {
        topics: topicsFromInput(),
        token: $('token').value || null,
        since: first('since'),
        transport: first('transport'),
        canaryTimeoutMs: num('canary_ms'),
        probeIntervalMs: num('probe_ms'),
        onEvent: onEvent,
        onStatus: onStatus,
        onReady: function (r) {
          r.at = new Date().getTime();
          demo.ready.push(r);
          text('ready', 'subscribed from ' + (r.lastId || 'now') + ' (' + r.transport + ')');
        },
        onReset: function () {
          demo.resets += 1;
        },
        onError: function (err) {
          demo.errors.push(err);
        }
      });
    } catch (e) {
      text('why', String(e.message || e));
      return;
    }
    listen(type);
  }

  function publish() {
    var topic = $('pub-topic').value;
    var type = $('pub-type').value;
    var raw = $('pub-data').value;
    var data;
    try {
      data = JSON.parse(raw);
    } catch (e) {
      data = raw;
    }
    listen(type);
    var x = new XMLHttpRequest();
    x.open('POST', '/v1/publish', true);
    x.setRequestHeader('Content-Type', 'application/json');
    var token = $('token').value;
    if (token) x.setRequestHeader('Authorization', 'Bearer ' + token);
    x.onreadystatechange = function () {
      if (x.readyState !== 4) return;
      var body = null;
      try {
        body = JSON.parse(x.responseText);
      } catch (e) {
        body = null;
      }
      if (x.status === 201 && body && body.ids) text('pub-result', 'Published as ' + body.ids.join(', ') + '.');
      else text('pub-result', 'Not published: ' + (body && body.message ? body.message : 'HTTP ' + x.status));
    };
    x.send(JSON.stringify({ topic: topic, type: type, data: data }));
    text('pub-result', 'Publishing...');
  }

  $('subscribe-form').onsubmit = function (e) {
    e.preventDefault();
    start();
  };
  $('publish-form').onsubmit = function (e) {
    e.preventDefault();
    publish();
  };
  start();
})();
