/*!
 * surepush.js: the browser client of surepush. Plain ES5, no dependency, no build step;
 * runs in old browsers (IE11 has no EventSource: it gets long polling).
 *
 * Served by the surepush binary at /surepush.js (classic script: global `SurePush`) and
 * /surepush.mjs (ES module: `import SurePush from "/surepush.mjs"`).
 *
 *   var sub = SurePush.subscribe("https://push.example.com", {
 *     topics: ["users/42"],              // patterns allowed: "users/*", "users/**"
 *     token: jwt,                        // or a function returning one; sent as access_token
 *     types: ["job.completed"],          // event types to listen for over SSE (see below)
 *     onEvent: function (ev) {},         // {id, topic, type, data, time}: exactly once, in order;
 *                                        // one published with "receipt": true is acknowledged
 *                                        // to the server once this returned
 *     onStatus: function (st) {},        // {state, event, transport, reason, lastId, ...}
 *     onReady: function (r) {},          // {lastId, transport}: once, when the server has the
 *                                        // subscription at a fixed position; every event
 *                                        // published from then on is delivered
 *     onReset: function (info) {},       // the server could not resume: reload your state
 *     onError: function (err) {}         // a fatal answer (400/401/403/404): {status, code, message}
 *   });
 *   sub.on("job.completed", fn);         // events of one type; "*" = every event
 *   sub.on("surepush.status", fn);       // also "surepush.ready", "surepush.reset", "surepush.error"
 *   sub.transport;                       // "sse" | "sse-close" | "longpoll"
 *   sub.reason;                          // why it is not plain "sse" ("" when it is)
 *   sub.setToken(newJwt);                // reconnect with a fresh token
 *   sub.close();
 *
 * Transport choice. SSE first: the server's first event, `surepush.hello`, is the canary. If
 * it does not arrive within canaryTimeoutMs (default 3 s), something on the way holds the
 * stream, so the client switches to SSE close mode (each response ends after a batch, which
 * a buffering proxy must deliver), and if that fails too, to long polling. Without
 * EventSource it goes straight to long polling. While connected it watches the
 * `surepush.ping` heartbeats and steps down when they arrive late, bunched or not at all.
 * A fallback is remembered per server origin in localStorage with its time, and the better
 * transport is probed again in the background (every probeIntervalMs, default 10 minutes,
 * and soon after the server restarts or an outage ends); the client steps back up when the
 * probe gets its canary in time. The chosen transport and the reason of a fallback are
 * reported to the server (`transport=` on every request, `fallback=` once per decision,
 * `probe=1` on probes). The memory is localStorage["surepush.transport:" + origin] =
 * {"transport": "sse-close", "reason": "sse_canary", "time": <ms>}; delete it to start over.
 *
 * Exactly once. Event ids are "SEQ-EPOCH": the client keeps the last id, drops anything not
 * after it (across reconnects and transport switches), resumes from it after a reload
 * (sessionStorage, per tab, server and topic set) and reports `reset` when the server says
 * it could not resume from it. Errors back off with full jitter (base 1 s, cap 30 s); a 503
 * Retry-After is honoured; the server's SSE `retry:` is honoured by EventSource itself.
 *
 * Event types over SSE. The server names each SSE event after its type and EventSource only
 * dispatches named events to listeners registered for that exact name, so over SSE the
 * client hears the types given in `types` or to `on(type, fn)`, plus unnamed events (which a
 * server honouring `untyped=1` sends for every type). Long polling delivers every type.
 */
(function (root) {
  'use strict';

  var STREAM = 0;
  var CLOSE = 1;
  var LONGPOLL = 2;
  var NAMES = ['sse', 'sse-close', 'longpoll'];
  var MEMORY_PREFIX = 'surepush.transport:';
  var RESUME_PREFIX = 'surepush.last:';
  /** A probe after a server restart or an outage waits a random part of this (no herd). */
  var QUICK_PROBE_MS = 5000;
  /** A remembered fallback older than this is forgotten: the network has likely changed. */
  var MEMORY_MAX_AGE_MS = 24 * 3600 * 1000;
  /** Acknowledgements of events that asked for a receipt wait this long to share a request. */
  var ACK_DELAY_MS = 200;
  /** Acknowledgements kept while the server cannot be reached (the oldest go first). */
  var MAX_ACKS = 10000;

  var DEFAULTS = {
    topics: null,
    token: null,
    since: null,
    types: null,
    transport: null,
    canaryTimeoutMs: 3000,
    probeIntervalMs: 600000,
    pollTimeoutSecs: 25,
    pollLimit: 500,
    backoffBaseMs: 1000,
    backoffMaxMs: 30000,
    resume: true,
    remember: true,
    withCredentials: false,
    onEvent: null,
    onStatus: null,
    onReset: null,
    onError: null
  };

  // Option callbacks and the `on` names they stand for.
  var CALLBACKS = {
    onEvent: '*',
    onStatus: 'surepush.status',
    onReady: 'surepush.ready',
    onReset: 'surepush.reset',
    onError: 'surepush.error'
  };

  function now() {
    return new Date().getTime();
  }

  function has(o, k) {
    return Object.prototype.hasOwnProperty.call(o, k);
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return null;
    }
  }

  function later(fn, ms) {
    return setTimeout(fn, ms > 0 ? ms : 0);
  }

  function rethrow(err) {
    // An exception in an app callback must not break the client; surface it anyway.
    setTimeout(function () {
      throw err;
    }, 0);
  }

  function enc(s) {
    return encodeURIComponent(String(s));
  }

  function store(kind) {
    try {
      return root[kind] || null;
    } catch (e) {
      return null; // storage disabled (privacy settings, sandboxed frames)
    }
  }

  function load(kind, key) {
    var s = store(kind);
    if (!s) return null;
    try {
      return s.getItem(key);
    } catch (e) {
      return null;
    }
  }

  function save(kind, key, value) {
    var s = store(kind);
    if (!s) return;
    try {
      if (value === null) s.removeItem(key);
      else s.setItem(key, value);
    } catch (e) {
      // quota or private mode: resuming and remembering are best effort
    }
  }

  // "42-3f9c2a10" -> {seq: "42", epoch: "3f9c2a10"}; a bare "42" has no epoch.
  function parseId(id) {
    var m = /^(\d+)(?:-([0-9a-fA-F]+))?$/.exec(String(id === null || id === undefined ? '' : id));
    if (!m) return null;
    return { seq: m[1].replace(/^0+(?=\d)/, ''), epoch: (m[2] || '').toLowerCase() };
  }

  // Compares decimal strings without losing precision past 2^53.
  function cmpSeq(a, b) {
    if (a.length !== b.length) return a.length < b.length ? -1 : 1;
    if (a === b) return 0;
    return a < b ? -1 : 1;
  }

  // True when `id` comes after `last`: anything follows nothing, another epoch is a new
  // sequence, within one epoch the sequence number decides.
  function isAfter(id, last) {
    var a = parseId(id);
    var b = parseId(last);
    if (!a || !b) return true;
    if (a.epoch && b.epoch && a.epoch !== b.epoch) return true;
    return cmpSeq(a.seq, b.seq) > 0;
  }

  function originOf(base) {
    var m = /^([a-z][a-z0-9+.\-]*:\/\/[^\/?#]+)/i.exec(base);
    if (m) return m[1].toLowerCase();
    var loc = root.location;
    return loc ? loc.protocol + '//' + loc.host : '';
  }

  function cleanReason(r) {
    return String(r || '').replace(/[^A-Za-z0-9_\-]/g, '').slice(0, 32);
  }

  // Retry-After: seconds or an HTTP date; milliseconds or null.
  function retryAfterMs(value) {
    if (!value) return null;
    if (/^\s*\d+\s*$/.test(value)) return parseInt(value, 10) * 1000;
    var t = Date.parse(value);
    return isNaN(t) ? null : Math.max(0, t - now());
  }

  function Subscription(baseUrl, options) {
    var o = {};
    var k;
    if (typeof baseUrl === 'object' && baseUrl !== null && !options) {
      options = baseUrl;
      baseUrl = '';
    }
    for (k in DEFAULTS) if (has(DEFAULTS, k)) o[k] = DEFAULTS[k];
    if (options) {
      for (k in options) if (has(options, k) && options[k] !== undefined) o[k] = options[k];
    }
    var topics = typeof o.topics === 'string' ? [o.topics] : o.topics;
    if (!topics || !topics.length) throw new Error('SurePush.subscribe: give at least one topic');
    this._forced = -1;
    if (o.transport) {
      this._forced = NAMES.indexOf(o.transport);
      if (this._forced < 0) {
        throw new Error('SurePush.subscribe: transport must be one of ' + NAMES.join(', '));
      }
    }

    /** The server's base URL without a trailing slash ("" = this page's origin). */
    this.baseUrl = String(baseUrl || '').replace(/\/+$/, '');
    this.topics = topics.slice();
    this.options = o;
    /** "sse" | "sse-close" | "longpoll": the transport in use (or being connected). */
    this.transport = null;
    /** Why the transport is not plain SSE ("" when it is). */
    this.reason = '';
    /** "connecting" | "connected" | "retrying" | "failed" | "closed" */
    this.state = 'connecting';
    /** The id of the last event delivered (or the server's cursor). */
    this.lastId = '';
    /** Events delivered to the app, and copies dropped because they were already delivered. */
    this.received = 0;
    this.duplicates = 0;

    this._handlers = {};
    this._types = {};
    this._timers = {};
    this._main = null;
    this._probe = null;
    this._level = STREAM;
    this._attempt = 0;
    this._fails = 0;
    this._stalls = [];
    this._epoch = '';
    this._pinned = false;
    this._isReady = false;
    this._acks = [];
    this._ackInFlight = false;
    this._ackFails = 0;
    this._hadErrors = false;
    this._restarted = false;
    this._probeDue = false;
    this._rememberPending = false;
    this._reportFallback = false;
    this._fallbackAt = 0;
    this._graceUntil = 0;
    this._lastTick = 0;
    this._closed = false;

    var types = o.types || [];
    for (var i = 0; i < types.length; i++) this._listen(String(types[i]));
    this._start();
  }

  var P = Subscription.prototype;

  // ---------------------------------------------------------------- public API

  /** Adds a handler: an event type, "*" (every event) or "surepush.status|ready|reset|error". */
  P.on = function (name, fn) {
    if (typeof fn !== 'function') throw new Error('SurePush: on(' + name + ') needs a function');
    name = String(name);
    (this._handlers[name] = this._handlers[name] || []).push(fn);
    if (name !== '*' && name.indexOf('surepush.') !== 0) this._listen(name);
    return this;
  };

  P.off = function (name, fn) {
    var list = this._handlers[String(name)];
    if (!list) return this;
    for (var i = list.length - 1; i >= 0; i--) if (list[i] === fn) list.splice(i, 1);
    return this;
  };

  /** Stops everything: connections, probes, timers. */
  P.close = function () {
    if (this._closed && this.state === 'closed') return;
    this._stop();
    this._sendAcks(); // what was handed to the app is still acknowledged
    this.state = 'closed';
    this._status('closed');
  };

  /** Reconnects at once (e.g. after a fatal error was fixed), keeping the last id. */
  P.reconnect = function () {
    this._stop();
    this._closed = false;
    this._attempt = 0;
    this._startWatchdog();
    this._connect(this._level);
  };

  /** Uses a new token from now on (reconnects). */
  P.setToken = function (token) {
    this.options.token = token;
    this.reconnect();
  };

  // ---------------------------------------------------------------- start and memory

  P._start = function () {
    var o = this.options;
    var saved = o.resume ? load('sessionStorage', this._resumeKey()) : null;
    var since = o.since === null || o.since === undefined ? '' : String(o.since);
    // Resume from whichever is newer: this tab's saved position or the app's `since`
    // (the app's, when they belong to different databases).
    var a = parseId(saved);
    var b = parseId(since);
    if (since === '' || since === '0') this.lastId = a ? saved : since;
    else if (a && b && (a.epoch === b.epoch || !a.epoch || !b.epoch) && cmpSeq(a.seq, b.seq) > 0) this.lastId = saved;
    else this.lastId = since;

    var level = STREAM;
    var reason = '';
    if (this._forced >= 0) {
      level = this._forced;
      reason = level > STREAM ? 'forced' : '';
    } else if (!root.EventSource) {
      level = LONGPOLL;
      reason = 'no_eventsource';
    } else {
      var mem = this._memory();
      if (mem) {
        level = mem.level;
        reason = mem.reason;
        this._fallbackAt = mem.time;
      }
    }
    this.reason = reason;
    this._reportFallback = reason !== '' && this._forced < 0;
    this._startWatchdog();
    this._connect(level);
  };

  P._resumeKey = function () {
    var topics = this.topics.slice().sort();
    return RESUME_PREFIX + (this.baseUrl || originOf('')) + '|' + topics.join('|');
  };

  P._memoryKey = function () {
    return MEMORY_PREFIX + originOf(this.baseUrl);
  };

  P._memory = function () {
    if (!this.options.remember) return null;
    var m = parseJson(load('localStorage', this._memoryKey()));
    if (!m || typeof m !== 'object' || typeof m.time !== 'number') return null;
    var level = NAMES.indexOf(m.transport);
    var age = now() - m.time;
    if (level <= STREAM || age > MEMORY_MAX_AGE_MS || age < -60000) return null;
    return { level: level, reason: cleanReason(m.reason) || 'remembered', time: m.time };
  };

  // Remembers the fallback (with the time it was found necessary) or forgets it at STREAM.
  P._remember = function (level) {
    if (!this.options.remember || this._forced >= 0 || this.reason === 'no_eventsource') return;
    if (level === STREAM) {
      save('localStorage', this._memoryKey(), null);
      return;
    }
    var m = { transport: NAMES[level], reason: this.reason, time: now() };
    save('localStorage', this._memoryKey(), JSON.stringify(m));
  };

  // ---------------------------------------------------------------- connecting

  P._connect = function (level) {
    if (this._closed) return;
    this._clearTimer('retry');
    this._drop(this._main);
    this._main = null;
    this._level = level;
    this.transport = NAMES[level];
    if (level === STREAM) this.reason = '';
    this.state = 'connecting';
    this._status('connecting');
    // Every transport starts from a fixed position: a fresh subscription first asks
    // where "now" is, so a first request that dies before its answer loses nothing.
    if (!this.lastId && !this._pinned) {
      this._pin(level);
      return;
    }
    if (level === LONGPOLL) {
      this._poll();
      return;
    }
    var self = this;
    var conn = this._openEs(level, 'main', level === CLOSE ? 'canary' : 'stream');
    this._main = conn;
    conn.canary = later(function () {
      self._canaryTimeout(conn);
    }, this.options.canaryTimeoutMs);
  };

  // A fresh subscription ("from now") first asks where "now" is, so that nothing published
  // while the canary decides (and the first transport possibly fails) can slip through. The
  // answer is also the subscription's ready signal: the server accepted token and topics,
  // and everything published after it will be delivered.
  P._pin = function (level) {
    var self = this;
    var conn = { kind: 'xhr', level: level, role: 'main', dead: false };
    this._main = conn;
    conn.req = this._get('/v1/events', [['limit', '1'], ['transport', NAMES[level]]], 15000, function (res) {
      if (conn.dead) return;
      conn.req = null;
      if (res.status === 200 && res.body) {
        self._noteEpoch(res.body.last_id);
        if (!self.lastId && res.body.last_id) self._setLast(String(res.body.last_id));
        self._pinned = true;
        self._ready(level);
        self._connect(level);
      } else {
        self._failed(level, res);
      }
    });
  };

  // Opens an EventSource. variant: "stream"; "canary" (close mode, 1 s timeout: its hello
  // arrives in time even through a proxy that holds the body until the end); "steady"
  // (close mode with the long timeout, once the path is proven).
  P._openEs = function (level, role, variant) {
    var self = this;
    var o = this.options;
    var params = [['since', this.lastId], ['transport', NAMES[level]]];
    if (level === CLOSE) {
      params.push(['mode', 'close']);
      params.push(['timeout', variant === 'canary' ? '1' : String(o.pollTimeoutSecs)]);
    } else {
      // Only used if the server serves close mode anyway (HTTP/1.0).
      params.push(['timeout', String(o.pollTimeoutSecs)]);
    }
    if (role === 'probe') params.push(['probe', '1']);
    else if (this._reportFallback && this.reason && variant !== 'steady') {
      params.push(['fallback', this.reason]);
    }
    params.push(['untyped', '1']);
    var conn = {
      kind: 'es',
      es: null,
      level: level,
      role: role,
      variant: variant,
      since: this.lastId,
      dead: false,
      hello: false,
      everHello: false,
      esLastId: '',
      lastRx: now(),
      lastPing: 0,
      base: null,
      pings: 0,
      hb: 15,
      http: '',
      effectiveClose: level === CLOSE,
      canary: null,
      listen: null
    };
    var es;
    try {
      es = new root.EventSource(this._url('/v1/stream', params), o.withCredentials ? { withCredentials: true } : undefined);
    } catch (e) {
      conn.dead = true;
      later(function () {
        if (role === 'probe') self._probeFailed(conn, 'error');
        else if (self._main === conn) self._esFailed(level);
      }, 0);
      return conn;
    }
    conn.es = es;
    var on = function (type, fn) {
      es.addEventListener(type, function (e) {
        if (!conn.dead) fn.call(self, conn, e);
      }, false);
    };
    on('surepush.hello', this._onHello);
    on('surepush.ping', this._onPing);
    on('surepush.shutdown', this._onShutdown);
    on('surepush.disconnected', this._onShutdown); // an operator ended this stream
    on('message', this._onMessage);
    for (var t in this._types) if (has(this._types, t)) on(t, this._onMessage);
    conn.listen = function (type) {
      on(type, self._onMessage);
    };
    es.onerror = function () {
      if (!conn.dead) self._onEsError(conn);
    };
    return conn;
  };

  P._listen = function (type) {
    if (type === 'message' || type === '*' || type.indexOf('surepush.') === 0 || has(this._types, type)) return;
    this._types[type] = true;
    if (this._main && this._main.listen) this._main.listen(type);
    if (this._probe && this._probe.listen) this._probe.listen(type);
  };

  P._drop = function (conn) {
    if (!conn || conn.dead) return;
    conn.dead = true;
    if (conn.canary) clearTimeout(conn.canary);
    conn.canary = null;
    if (conn.es) {
      try {
        conn.es.close();
      } catch (e) {
        // already closed
      }
    }
    if (conn.req) conn.req.abort();
    conn.req = null;
  };

  // ---------------------------------------------------------------- SSE events

  P._onHello = function (conn, e) {
    var h = parseJson(e.data) || {};
    conn.hello = true;
    conn.lastRx = now();
    conn.lastPing = conn.lastRx;
    conn.base = null;
    conn.pings = 0;
    conn.hb = h.heartbeat_secs > 0 ? h.heartbeat_secs : 15;
    conn.http = String(h.http || '');
    conn.effectiveClose = h.mode === 'close';
    if (conn.canary) {
      clearTimeout(conn.canary);
      conn.canary = null;
    }
    if (conn.role === 'probe') this._probeWorked(conn, h);
    else this._takeHello(conn, h);
  };

  P._takeHello = function (conn, h) {
    this._noteEpoch(h.last_id);
    if (h.reset) this._reset(h.last_id);
    else if (h.last_id && !this.lastId) this._setLast(String(h.last_id));
    if (!conn.everHello) {
      conn.everHello = true;
      this._connected(conn);
    }
  };

  P._onMessage = function (conn, e) {
    conn.lastRx = now();
    if (e.lastEventId) conn.esLastId = e.lastEventId;
    var ev = parseJson(e.data);
    if (!ev || typeof ev !== 'object') {
      ev = { id: e.lastEventId || '', topic: '', type: e.type, data: e.data, time: '' };
    }
    this._deliver(ev);
  };

  // Heartbeats: each carries the server's time. The smallest (arrival - sent) offset seen on
  // the connection is its baseline; a ping much later than that was held up on the way (a
  // proxy or scanner buffering mid-session, or releasing pings in bunches): step down.
  P._onPing = function (conn, e) {
    var t = now();
    conn.lastRx = t;
    if (conn.role !== 'main' || conn.level !== STREAM || conn.effectiveClose) return;
    var gap = t - conn.lastPing;
    conn.lastPing = t;
    conn.pings += 1;
    if (t < this._graceUntil) {
      conn.base = null;
      return;
    }
    var hbMs = conn.hb * 1000;
    var p = parseJson(e.data);
    var sent = p && p.time ? Date.parse(p.time) : NaN;
    var bunched = gap < hbMs / 4;
    if (!isNaN(sent)) {
      var off = t - sent;
      if (conn.base === null || off < conn.base) conn.base = off;
      else if (off - conn.base > Math.max(2500, hbMs / 2)) this._stepDown(bunched ? 'sse_bunched' : 'sse_late');
    } else if (conn.pings > 1 && bunched) {
      this._stepDown('sse_bunched');
    }
  };

  P._onShutdown = function (conn) {
    this._restarted = true;
    if (conn.role === 'probe') {
      this._drop(conn);
      this._probe = null;
      return;
    }
    this._drop(conn);
    this._main = null;
    this._retryLater(this._level, this._backoff(), 'shutdown');
  };

  P._onEsError = function (conn) {
    if (conn.role === 'probe') {
      this._probeFailed(conn, 'error');
      return;
    }
    if (conn.hello) {
      // A response that had begun ended (close mode, HTTP/1.0) or was cut.
      conn.hello = false;
      conn.lastRx = now();
      var stale = conn.esLastId === '' && conn.since !== this.lastId;
      if (conn.variant === 'canary' || stale || conn.es.readyState === 2) {
        // Reopen ourselves: close mode with its long timeout once proven, or a fresh
        // cursor (EventSource would resend the URL's stale `since`).
        this._reopen(conn, conn.variant === 'canary' ? 'steady' : conn.variant);
      }
      // Otherwise EventSource reconnects by itself after the server's `retry:`.
      return;
    }
    // Failed before its hello: a refused or broken connection, or a non-200 answer.
    this._drop(conn);
    this._main = null;
    this._esFailed(conn.level);
  };

  P._reopen = function (conn, variant) {
    this._drop(conn);
    var next = this._openEs(conn.level, 'main', variant);
    next.everHello = true;
    next.hb = conn.hb;
    next.effectiveClose = conn.effectiveClose;
    this._main = next;
  };

  // EventSource hides the status code. Ask the server directly: the answer tells an outage
  // (keep the transport, back off) from a path that breaks SSE only (step down after two),
  // shows fatal answers (401, 403...), and delivers what is waiting meanwhile.
  P._esFailed = function (level) {
    var self = this;
    this._hadErrors = true;
    var conn = { kind: 'xhr', level: level, role: 'main', dead: false };
    this._main = conn;
    var params = [['since', this.lastId], ['limit', String(this.options.pollLimit)], ['transport', NAMES[level]]];
    conn.req = this._get('/v1/events', params, 15000, function (res) {
      if (conn.dead) return;
      conn.req = null;
      if (res.status === 200 && res.body && res.body.events) {
        self._takeBody(res.body);
        if (conn.dead || self._closed) return;
        self._fails += 1;
        if (self._fails >= 2 && self._forced < 0) {
          self._stepDown(level === STREAM ? 'sse_error' : 'close_error');
          return;
        }
        self._retryLater(level, self._backoff(), 'sse_error');
      } else {
        self._failed(level, res);
      }
    });
  };

  P._canaryTimeout = function (conn) {
    conn.canary = null;
    if (conn.dead || conn.hello) return;
    if (conn.role === 'probe') {
      this._probeFailed(conn, 'canary');
      return;
    }
    if (this._forced >= 0) {
      this._retryLater(conn.level, this._backoff(), 'canary');
      return;
    }
    this._stepDown(conn.level === STREAM ? 'sse_canary' : 'close_canary');
  };

  // ---------------------------------------------------------------- long polling

  P._poll = function () {
    // The first request of a connection asks with timeout=0: its answer (at once) is the
    // proof the path works, instead of up to pollTimeoutSecs later.
    var conn = { kind: 'xhr', level: LONGPOLL, role: 'main', dead: false, ok: false, first: true, lastRx: now() };
    this._main = conn;
    this._pollOnce(conn);
  };

  P._pollOnce = function (conn) {
    var self = this;
    var o = this.options;
    var started = now();
    var waitSecs = conn.first ? 0 : o.pollTimeoutSecs;
    conn.first = false;
    var params = [
      ['since', this.lastId],
      ['timeout', String(waitSecs)],
      ['limit', String(o.pollLimit)],
      ['transport', 'longpoll']
    ];
    if (this._reportFallback && this.reason) params.push(['fallback', this.reason]);
    conn.req = this._get('/v1/poll', params, (o.pollTimeoutSecs + 15) * 1000, function (res) {
      if (conn.dead) return;
      conn.req = null;
      if (res.status !== 200 || !res.body || !res.body.events) {
        self._drop(conn);
        self._main = null;
        self._failed(LONGPOLL, res);
        return;
      }
      conn.lastRx = now();
      if (!conn.ok) {
        conn.ok = true;
        self._connected(conn);
      }
      self._takeBody(res.body);
      if (conn.dead || self._closed) return;
      // An empty answer long before the timeout (a server stopping, a meddling proxy):
      // do not spin.
      var quick = waitSecs > 0 && !res.body.events.length && now() - started < 1000;
      if (quick) {
        conn.req = { abort: function () {} };
        var timer = later(function () {
          if (!conn.dead) self._pollOnce(conn);
        }, 1000);
        conn.req.abort = function () {
          clearTimeout(timer);
        };
      } else {
        self._pollOnce(conn);
      }
    });
  };

  // ---------------------------------------------------------------- outcomes

  P._connected = function (conn) {
    var level = conn.level;
    var wasErr = this._hadErrors;
    this._attempt = 0;
    this._fails = 0;
    this._hadErrors = false;
    this._reportFallback = false;
    if (level === STREAM && conn.effectiveClose) {
      // The server chose close mode itself (an HTTP/1.0 hop cannot stream).
      this.transport = 'sse-close';
      this.reason = conn.http === '1.0' ? 'http10' : 'server_close';
    } else {
      this.transport = NAMES[level];
    }
    if (this._forced < 0) {
      if (level === STREAM) this._remember(STREAM);
      else if (this._rememberPending) this._remember(level);
      this._rememberPending = false;
    }
    this.state = 'connected';
    this._ready(level);
    this._status('connected');
    if (level > STREAM && this._forced < 0 && root.EventSource) {
      if (!this._fallbackAt) this._fallbackAt = now();
      var due = this._fallbackAt + this.options.probeIntervalMs - now();
      if (wasErr || this._restarted || this._probeDue) due = Math.min(due, Math.random() * QUICK_PROBE_MS);
      this._scheduleProbe(due);
    }
    this._restarted = false;
    this._probeDue = false;
  };

  // Once per subscription, as soon as the server has confirmed it at a fixed position
  // (the pin's answer, or the first hello / poll answer when the position was known):
  // from then on every event published is delivered.
  P._ready = function (level) {
    if (this._isReady) return;
    this._isReady = true;
    this._emit('surepush.ready', { lastId: this.lastId, transport: NAMES[level] });
  };

  P._stepDown = function (reason) {
    var from = this._level;
    if (this._forced >= 0 || from >= LONGPOLL) {
      this._retryLater(from, this._backoff(), reason);
      return;
    }
    var to = from + 1;
    this._drop(this._main);
    this._main = null;
    this._drop(this._probe);
    this._probe = null;
    this._clearTimer('probe');
    this.reason = reason;
    this._reportFallback = true;
    this._rememberPending = true;
    this._fallbackAt = now();
    this._stalls = [];
    this._fails = 0;
    this._status('fallback', { from: NAMES[from], to: NAMES[to] });
    this._connect(to);
  };

  // Any non-200 answer (or none).
  P._failed = function (level, res) {
    var s = res.status;
    this._hadErrors = true;
    if (s >= 400 && s < 500 && s !== 408 && s !== 429) {
      this._fatal(res);
      return;
    }
    var delay = this._backoff();
    if (s === 503 || s === 429) {
      var ra = retryAfterMs(res.retryAfter);
      if (ra !== null) delay = ra + Math.floor(Math.random() * Math.min(this.options.backoffMaxMs, Math.max(ra, 1000)));
    }
    this._retryLater(level, delay, s ? 'http_' + s : 'network');
  };

  P._fatal = function (res) {
    var b = res.body && typeof res.body === 'object' ? res.body : {};
    var err = {
      status: res.status,
      code: b.error || 'http_' + res.status,
      message: b.message || 'the server answered ' + res.status
    };
    this._stop();
    this.state = 'failed';
    this._status('failed', { error: err });
    this._emit('surepush.error', err);
  };

  // Full jitter: a random delay in [0, min(cap, base * 2^attempt)).
  P._backoff = function () {
    var o = this.options;
    var cap = Math.min(o.backoffMaxMs, o.backoffBaseMs * Math.pow(2, Math.min(this._attempt, 30)));
    this._attempt += 1;
    return Math.floor(Math.random() * cap);
  };

  P._retryLater = function (level, delay, why) {
    var self = this;
    if (this._closed) return;
    this._drop(this._main);
    this._main = null;
    this._clearTimer('retry');
    this.state = 'retrying';
    this._status('retry', { retryInMs: delay, why: why });
    this._timers.retry = later(function () {
      self._timers.retry = null;
      self._connect(level);
    }, delay);
  };

  P._stop = function () {
    this._closed = true;
    this._drop(this._main);
    this._drop(this._probe);
    this._main = null;
    this._probe = null;
    for (var k in this._timers) if (has(this._timers, k)) this._clearTimer(k);
    if (this._watchdog) clearInterval(this._watchdog);
    this._watchdog = null;
  };

  P._clearTimer = function (name) {
    if (this._timers[name]) clearTimeout(this._timers[name]);
    this._timers[name] = null;
  };

  // ---------------------------------------------------------------- watchdog

  P._startWatchdog = function () {
    var self = this;
    if (this._watchdog) clearInterval(this._watchdog);
    this._lastTick = now();
    this._watchdog = setInterval(function () {
      self._tick();
    }, 1000);
  };

  P._tick = function () {
    var t = now();
    var conn = this._main;
    if (t - this._lastTick > 4000) {
      // The page was frozen or the machine slept: judge the connection afresh.
      this._graceUntil = t + 5000;
      if (conn) {
        conn.lastRx = t;
        conn.base = null;
      }
    }
    this._lastTick = t;
    if (!conn || conn.dead || conn.kind !== 'es' || !conn.everHello) return;
    var hb = conn.hb * 1000;
    var o = this.options;
    var limit = conn.level === STREAM && !conn.effectiveClose
      ? Math.max(2 * hb + 3000, 10000)
      : o.pollTimeoutSecs * 1000 + 2 * hb + o.canaryTimeoutMs + 5000;
    if (t - conn.lastRx > limit) this._silence(conn);
  };

  // Nothing at all for too long: reconnect (the canary then decides); twice within five
  // minutes means this transport stalls here: step down.
  P._silence = function (conn) {
    var t = now();
    this._stalls.push(t);
    while (this._stalls.length && t - this._stalls[0] > 300000) this._stalls.shift();
    this._status('stall');
    if (this._stalls.length >= 2 && conn.level < LONGPOLL && this._forced < 0) {
      this._stepDown(conn.level === STREAM ? 'sse_stall' : 'close_stall');
      return;
    }
    this._connect(conn.level);
  };

  // ---------------------------------------------------------------- probing upwards

  P._scheduleProbe = function (delay) {
    var self = this;
    if (this._forced >= 0 || this._closed || !root.EventSource || this._level === STREAM) return;
    delay = Math.max(0, delay);
    if (this._timers.probe && this._probeAt <= now() + delay) return;
    this._clearTimer('probe');
    this._probeAt = now() + delay;
    this._timers.probe = later(function () {
      self._timers.probe = null;
      self._startProbe(STREAM);
    }, delay);
  };

  P._startProbe = function (target) {
    var self = this;
    if (this._closed || this._probe || this._level <= target) return;
    if (this.state !== 'connected') {
      this._probeDue = true; // probe once connected again
      return;
    }
    var conn = this._openEs(target, 'probe', target === CLOSE ? 'canary' : 'stream');
    if (conn.dead) return;
    this._probe = conn;
    conn.canary = later(function () {
      self._canaryTimeout(conn);
    }, this.options.canaryTimeoutMs);
    this._status('probe', { probing: NAMES[target] });
  };

  P._probeWorked = function (conn, h) {
    var from = this.transport;
    this._probe = null;
    this._clearTimer('retry');
    this._drop(this._main);
    conn.role = 'main';
    this._main = conn;
    this._level = conn.level;
    if (conn.level === STREAM) this.reason = '';
    this._stalls = [];
    this._fails = 0;
    this._rememberPending = true;
    this._status('stepup', { from: from, to: NAMES[conn.level] });
    this._takeHello(conn, h);
  };

  P._probeFailed = function (conn, why) {
    this._drop(conn);
    if (this._probe === conn) this._probe = null;
    if (this._closed) return;
    if (conn.level === STREAM && this._level === LONGPOLL) {
      this._startProbe(CLOSE); // plain SSE is still held up; maybe close mode gets through
      return;
    }
    this._fallbackAt = now();
    this._remember(this._level); // still needed: restart the clock
    this._status('probe_failed', { probed: NAMES[conn.level], why: why });
    this._scheduleProbe(this.options.probeIntervalMs * (0.9 + Math.random() * 0.2));
  };

  // ---------------------------------------------------------------- delivery

  P._takeBody = function (body) {
    this._noteEpoch(body.last_id);
    if (body.reset) this._reset('');
    var events = body.events || [];
    for (var i = 0; i < events.length && !this._closed; i++) this._deliver(events[i]);
    if (body.last_id && isAfter(body.last_id, this.lastId)) this._setLast(String(body.last_id));
  };

  P._deliver = function (ev) {
    var id = ev && ev.id !== undefined && ev.id !== null ? String(ev.id) : '';
    if (id) {
      if (!isAfter(id, this.lastId)) {
        this.duplicates += 1;
        return;
      }
      this._setLast(id);
    }
    this.received += 1;
    this._emit('*', ev);
    if (ev && typeof ev.type === 'string' && ev.type !== '*' && ev.type.indexOf('surepush.') !== 0) {
      this._emit(ev.type, ev);
    }
    if (id && ev.receipt === true) this._queueAck(id);
  };

  // ---------------------------------------------------------------- receipts

  // An event published with "receipt": true is acknowledged once it was handed to the
  // app: ids gather for ACK_DELAY_MS and go in one small POST (text/plain, so no CORS
  // preflight), retried with backoff until the server has them.
  P._queueAck = function (id) {
    this._acks.push(id);
    if (this._acks.length > MAX_ACKS) this._acks.splice(0, this._acks.length - MAX_ACKS);
    if (!this._timers.ack && !this._ackInFlight) this._scheduleAck(ACK_DELAY_MS);
  };

  P._scheduleAck = function (delay) {
    var self = this;
    this._clearTimer('ack');
    this._timers.ack = later(function () {
      self._timers.ack = null;
      self._sendAcks();
    }, delay);
  };

  P._sendAcks = function () {
    if (!this._acks.length || this._ackInFlight) return;
    var self = this;
    var ids = this._acks.splice(0, 1000);
    this._ackInFlight = true;
    this._request('POST', '/v1/receipts', [], JSON.stringify({ ids: ids }), 15000, function (res) {
      self._ackInFlight = false;
      var st = res.status;
      if (st === 200 || (st >= 400 && st < 500 && st !== 408 && st !== 429)) {
        // done, or refused for good (the answer says why; retrying cannot help)
        if (st !== 200) self._emit('surepush.error', { status: st, code: res.body && res.body.error, message: res.body && res.body.message, receipts: ids });
        self._ackFails = 0;
        if (self._acks.length) self._scheduleAck(0);
        return;
      }
      self._acks = ids.concat(self._acks);
      self._ackFails += 1;
      if (!self._closed) self._scheduleAck(Math.random() * Math.min(30000, 1000 * Math.pow(2, self._ackFails)));
    });
  };

  // The server could not resume from our id (trimmed by retention, or another database):
  // its cursor becomes ours and the app is told to reload its state.
  P._reset = function (serverLastId) {
    this.lastId = '';
    if (serverLastId) this._setLast(String(serverLastId));
    else save('sessionStorage', this._resumeKey(), null);
    var info = { lastId: this.lastId, transport: this.transport };
    this._status('reset');
    this._emit('surepush.reset', info);
  };

  P._setLast = function (id) {
    this.lastId = id;
    if (this.options.resume) save('sessionStorage', this._resumeKey(), id);
  };

  // A different epoch means a different database behind the URL (a restore, a new install):
  // the path may have changed too, so probe the better transport soon.
  P._noteEpoch = function (id) {
    var p = parseId(id);
    if (!p || !p.epoch) return;
    if (this._epoch && this._epoch !== p.epoch) {
      this._restarted = true;
      if (this.state === 'connected' && this._level > STREAM) this._scheduleProbe(Math.random() * QUICK_PROBE_MS);
    }
    this._epoch = p.epoch;
  };

  P._status = function (event, extra) {
    var st = {
      state: this.state,
      event: event,
      transport: this.transport,
      reason: this.reason,
      lastId: this.lastId
    };
    if (extra) for (var k in extra) if (has(extra, k)) st[k] = extra[k];
    this._emit('surepush.status', st);
  };

  P._emit = function (name, arg) {
    var fns = [];
    for (var cb in CALLBACKS) {
      if (has(CALLBACKS, cb) && CALLBACKS[cb] === name && typeof this.options[cb] === 'function') {
        fns.push(this.options[cb]);
      }
    }
    var list = this._handlers[name];
    if (list) fns = fns.concat(list);
    for (var i = 0; i < fns.length; i++) {
      try {
        fns[i].call(this, arg);
      } catch (err) {
        rethrow(err);
      }
    }
  };

  // ---------------------------------------------------------------- HTTP

  P._url = function (path, params) {
    var q = [];
    var i;
    for (i = 0; i < this.topics.length; i++) q.push('topic=' + enc(this.topics[i]));
    for (i = 0; i < params.length; i++) {
      var v = params[i][1];
      if (v !== null && v !== undefined && v !== '') q.push(enc(params[i][0]) + '=' + enc(v));
    }
    var token = this.options.token;
    if (typeof token === 'function') token = token();
    if (token) q.push('access_token=' + enc(token));
    return this.baseUrl + path + '?' + q.join('&');
  };

  // GET with a timeout; cb({status, body, retryAfter}) exactly once unless aborted.
  P._get = function (path, params, timeoutMs, cb) {
    return this._request('GET', path, params, null, timeoutMs, cb);
  };

  P._request = function (method, path, params, body, timeoutMs, cb) {
    var x = new root.XMLHttpRequest();
    var done = false;
    var timer = null;
    var finish = function (res) {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      cb(res);
    };
    x.onreadystatechange = function () {
      if (x.readyState !== 4 || done) return;
      var ra = null;
      try {
        ra = x.getResponseHeader('Retry-After');
      } catch (e) {
        ra = null;
      }
      finish({ status: x.status, body: x.responseText ? parseJson(x.responseText) : null, retryAfter: ra });
    };
    try {
      x.open(method, this._url(path, params), true);
      if (this.options.withCredentials) x.withCredentials = true;
      x.setRequestHeader('Accept', 'application/json');
      if (body !== null) x.setRequestHeader('Content-Type', 'text/plain');
      x.send(body);
    } catch (e) {
      later(function () {
        finish({ status: 0, body: null, retryAfter: null });
      }, 0);
    }
    timer = later(function () {
      if (done) return;
      done = true;
      try {
        x.abort();
      } catch (e) {
        // nothing to abort
      }
      cb({ status: 0, body: null, retryAfter: null, timedOut: true });
    }, timeoutMs);
    return {
      abort: function () {
        if (done) return;
        done = true;
        if (timer) clearTimeout(timer);
        try {
          x.abort();
        } catch (e) {
          // nothing to abort
        }
      }
    };
  };

  var SurePush = {
    version: '1.0.0',
    transports: NAMES.slice(),
    /** SurePush.subscribe(baseUrl, options) -> Subscription (baseUrl "" = this origin). */
    subscribe: function (baseUrl, options) {
      return new Subscription(baseUrl, options);
    },
    Subscription: Subscription
  };

  if (typeof module === 'object' && module && module.exports) module.exports = SurePush;
  if (root) root.SurePush = SurePush;
})(typeof self !== 'undefined' ? self : typeof window !== 'undefined' ? window : this);
