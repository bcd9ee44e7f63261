/* surepush network doctor: tries each transport against the server's probe endpoints and
 * explains, in plain words, what works through this browser's network path. Each probe
 * sends its canary at once and a probe event one second later; a buffering proxy holds
 * both until the response ends (3 s later for the stream probe). Plain ES5. */
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var PROBE_AFTER_MS = 1000;
  /** A probe event later than this after its canary was held back by something. */
  var LATE_MS = 2500;
  var TIMEOUT_MS = 8000;

  function now() { return (window.performance && performance.now) ? performance.now() : Date.now(); }

  function show(id, state, text) {
    var el = $(id);
    el.setAttribute('data-state', state);
    el.textContent = text;
    el.className = 'badge ' + (state === 'ok' ? 'ok' : state === 'buffered' ? 'warn' : state === 'pending' ? '' : 'bad');
  }

  function ms(x) { return Math.round(x) + ' ms'; }

  function protocolOf(url) {
    try {
      var e = performance.getEntriesByName(new URL(url, location.href).href);
      if (e.length && e[e.length - 1].nextHopProtocol) return e[e.length - 1].nextHopProtocol;
    } catch (err) {}
    return '';
  }

  /** SSE probe: resolves {state, hello, probe} timings relative to the request start. */
  function sseProbe(mode, done) {
    if (!window.EventSource) { done({ state: 'unsupported' }); return; }
    var url = '/v1/stream/probe?mode=' + mode + '&t=' + Date.now();
    var t0 = now(), hello = null, serverHttp = '', finished = false;
    var es = new EventSource(url);
    var finish = function (r) {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      es.close();
      r.protocol = protocolOf(url);
      r.serverHttp = serverHttp;
      done(r);
    };
    var timer = setTimeout(function () {
      finish({ state: hello === null ? 'blocked' : 'buffered', hello: hello });
    }, TIMEOUT_MS);
    es.addEventListener('surepush.hello', function (e) {
      if (hello === null) hello = now() - t0;
      // the HTTP version the server saw (resource timing has no entry for a stream
      // closed before its response ended, so the browser side is often unknown)
      try { serverHttp = String(JSON.parse(e.data).http || ''); } catch (err) {}
    });
    es.addEventListener('probe', function () {
      var probe = now() - t0;
      var late = hello === null || probe - hello > LATE_MS || hello > LATE_MS;
      finish({ state: late ? 'buffered' : 'ok', hello: hello, probe: probe });
    });
    es.onerror = function () {
      // close mode ends the response after its event: an error before it means failure
      if (hello === null) finish({ state: 'blocked' });
    };
  }

  function longPollProbe(done) {
    var url = '/v1/poll/probe?t=' + Date.now();
    var t0 = now();
    var x = new XMLHttpRequest();
    x.open('GET', url);
    x.timeout = TIMEOUT_MS;
    x.onload = function () {
      var t = now() - t0;
      done({ state: x.status === 200 ? (t > PROBE_AFTER_MS + LATE_MS ? 'buffered' : 'ok') : 'blocked', probe: t, protocol: protocolOf(url), status: x.status });
    };
    x.onerror = x.ontimeout = function () { done({ state: 'blocked' }); };
    x.send();
  }

  function describe(r) {
    switch (r.state) {
      case 'ok': return 'works: first message after ' + ms(r.hello || 0) + ', test event after ' + ms(r.probe);
      case 'buffered': return 'held back: ' + (r.probe ? 'the test event took ' + ms(r.probe) : 'the test event never arrived in time') + ' (a proxy buffers it)';
      case 'blocked': return 'does not get through';
      case 'unsupported': return 'not supported by this browser';
      default: return r.state;
    }
  }

  /** A streamed probe this much later than the long poll's (both sent one second after
   * their request arrived; the long poll's answer has a length, so nothing holds it) was
   * held on the way. */
  var HELD_WRITES_MS = 150;

  function verdict(s, c, l) {
    var lag = s.state === 'ok' && l.state === 'ok' ? s.probe - l.probe : 0;
    if (lag >= HELD_WRITES_MS) {
      return ['Live updates work here through streaming (Server-Sent Events), but each one arrives about ' + ms(lag) + ' late: a proxy on this network holds small writes back.',
        'On HAProxy (which does this by default, about 200 ms per update), set option http-no-delay for this server.', 'ok'];
    }
    if (s.state === 'ok') return ['Live updates work well here: surepush uses streaming (Server-Sent Events).', 'Nothing needs to change.', 'ok'];
    if (c.state === 'ok') return ['Live updates work here. A proxy on this network holds back streamed responses, so surepush will deliver each update as its own short response (SSE close mode). Updates still arrive at once.', s.state === 'buffered' ? 'For the best result, ask the network team to turn off response buffering for this server (for example proxy_buffering off in nginx).' : '', 'ok'];
    if (l.state === 'ok') return ['Live updates work here through long polling. Streaming does not get through this network, so surepush falls back to long polling: updates still arrive within a second or so.', 'If you can, ask the network team to let Server-Sent Events (text/event-stream) through without buffering.', 'warn'];
    return ['Live updates cannot get through this network to this browser right now.', 'Check that this server is reachable and that no filter blocks text/event-stream or long-running requests. Then test again.', 'bad'];
  }

  function run() {
    $('again').hidden = true;
    $('verdict').textContent = 'Testing… (about ten seconds)';
    $('advice').textContent = '';
    ['r-stream', 'r-close', 'r-longpoll'].forEach(function (id) { show(id, 'pending', 'testing'); });
    $('r-browser').textContent = (window.EventSource ? 'EventSource available' : 'no EventSource') + '; ' + navigator.userAgent;
    sseProbe('stream', function (s) {
      show('r-stream', s.state, describe(s));
      var conn = [];
      if (s.serverHttp) conn.push('HTTP/' + s.serverHttp + ' at the server');
      if (s.protocol) conn.push('protocol ' + s.protocol + ' from this browser');
      conn.push(location.protocol.replace(':', ''));
      $('r-http').textContent = conn.join(', ');
      $('r-http').setAttribute('data-http', s.serverHttp || '');
      sseProbe('close', function (c) {
        show('r-close', c.state, describe(c));
        longPollProbe(function (l) {
          show('r-longpoll', l.state, describe(l));
          var v = verdict(s, c, l);
          $('verdict').textContent = v[0];
          $('verdict').setAttribute('data-verdict', s.state === 'ok' ? 'sse' : c.state === 'ok' ? 'sse-close' : l.state === 'ok' ? 'longpoll' : 'none');
          $('advice').textContent = v[1];
          $('again').hidden = false;
        });
      });
    });
  }

  $('again').addEventListener('click', run);
  run();
})();
