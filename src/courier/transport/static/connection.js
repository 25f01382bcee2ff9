// One live link to the server: a WebSocket when it works, HTTP long-poll when it does not.
// It reconnects with jittered backoff and always resumes after the last processed seq, so the
// rest of the app sees one gap-free stream of timeline events whatever the network does.
// The token goes in the first WebSocket frame, never in the URL, which proxies log.

import { isGroupKey } from "./store.js";
import { ApiError, NetworkError } from "./api.js";
import { backoffDelay } from "./backoff.js";

const HELLO_TIMEOUT_MS = 10000;
const PING_EVERY_MS = 20000;
const PONG_TIMEOUT_MS = 10000;
const POLL_WAIT_S = 25;
const POLL_LIMIT = 500;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 10000;
const WS_FAILURES_BEFORE_POLL = 2;
const WS_PROBE_FIRST_MS = 2 * 60 * 1000;
const WS_PROBE_MAX_MS = 30 * 60 * 1000;
const OFFLINE_AFTER_ATTEMPTS = 4;
const STABLE_AFTER_MS = 10000;

/**
 * Callbacks (all optional except getAfter):
 *   getAfter(): number          seq to resume after
 *   getUser(): string           the username, for a balancer that hashes users onto nodes
 *   onReady({transport, hello}) the link is up: flush the outbox, re-send read marks
 *   onEvent(event)              a timeline event (has a seq)
 *   onFrame(frame)              sent / typing / error / synced / pong frames
 *   onStatus({state, transport, retryAt, attempt})
 *   onAuthError()               the token is no longer valid
 */
export class Connection {
  constructor(api, getToken, callbacks) {
    this.api = api;
    this.getToken = getToken;
    this.cb = callbacks;
    this.transport = "ws";
    this.state = "connecting";
    this.running = false;
    this.generation = 0;
    this.attempt = 0;
    this.wsFailures = 0;
    this.connectedAt = 0;
    this.ws = null;
    this.pollAbort = null;
    this.retryTimer = null;
    this.retryAt = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.probeTimer = null;
    this.probeDelay = WS_PROBE_FIRST_MS;
    this.probing = false;
    this.httpSends = { items: [], draining: false };
    this.onOnline = () => this.retryNow();
    this.onOffline = () => this.wentOffline();
  }

  start() {
    if (this.running) return;
    this.running = true;
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    this.connect();
  }

  stop() {
    this.running = false;
    this.generation++;
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    this.teardown();
    clearTimeout(this.probeTimer);
  }

  /** Skip the backoff wait and try again now. */
  retryNow() {
    if (!this.running || this.state === "connected") return;
    this.attempt = 0;
    this.connect();
  }

  // The browser says the network is gone: drop the link now rather than wait for a ping to
  // time out, and show "offline". The `online` event brings it back at once.
  wentOffline() {
    if (!this.running) return;
    this.generation++;
    this.teardown();
    this.attempt = Math.max(this.attempt, OFFLINE_AFTER_ATTEMPTS - 1);
    this.scheduleReconnect();
  }

  get ready() {
    return this.state === "connected";
  }

  // ---- sending ----------------------------------------------------------------------------

  /** Send a message; the answer arrives as a `sent` or `error` frame through onFrame. */
  sendMessage(msg) {
    if (!this.ready) return false;
    if (this.transport === "ws") {
      const target = isGroupKey(msg.to) ? { group: msg.to } : { to: msg.to };
      return this.sendFrame({ type: "send", ...target, body: msg.body, client_id: msg.client_id });
    }
    this.httpSends.items.push(msg);
    this.drainHttpSends();
    return true;
  }

  ack(seq) {
    if (!this.ready) return false;
    if (this.transport === "ws") return this.sendFrame({ type: "ack", seq });
    this.api.ack(seq).catch(() => {});
    return true;
  }

  read(peer, seq) {
    if (!this.ready) return false;
    if (this.transport === "ws") {
      const target = isGroupKey(peer) ? { group: peer } : { peer };
      return this.sendFrame({ type: "read", ...target, seq });
    }
    this.api.read(peer, seq).catch(() => {});
    return true;
  }

  typing(to) {
    // Typing is ephemeral and exists only on the WebSocket.
    if (!this.ready || this.transport !== "ws") return false;
    return this.sendFrame(isGroupKey(to) ? { type: "typing", group: to } : { type: "typing", to });
  }

  /** Ask for a replay after `after` (used to close a gap in the live stream). */
  sync(after, limit = 1000) {
    if (!this.ready || this.transport !== "ws") return false;
    return this.sendFrame({ type: "sync", after, limit });
  }

  sendFrame(frame) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return false; // 1 = OPEN
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  // Over HTTP, sends go one at a time in order, so the server stores them in typing order.
  // A network failure drops the rest of the queue: the outbox re-sends them, in order, later.
  // Each connection has its own queue; an answer that arrives after a reconnect still counts.
  async drainHttpSends() {
    const queue = this.httpSends;
    if (queue.draining) return;
    queue.draining = true;
    try {
      while (queue.items.length && queue === this.httpSends) {
        const msg = queue.items[0];
        try {
          const res = await this.api.sendMessage(msg);
          queue.items.shift();
          this.cb.onFrame?.({ type: "sent", ...res, client_id: res.client_id ?? msg.client_id });
        } catch (err) {
          if (queue !== this.httpSends) return;
          if (err instanceof ApiError && err.status === 401) {
            queue.items = [];
            this.authFailed();
            return;
          }
          if (err instanceof ApiError && err.status !== 429 && err.status < 500) {
            queue.items.shift();
            this.cb.onFrame?.({
              type: "error",
              code: err.code,
              message: err.message,
              ref: msg.client_id,
            });
            continue;
          }
          // The network failed: the message may or may not be stored. The outbox sends it
          // again with the same client_id, which the server answers with the original.
          const failed = queue.items;
          queue.items = [];
          for (const m of failed) {
            this.cb.onFrame?.({
              type: "error",
              code: "not_connected",
              message: err.message,
              ref: m.client_id,
            });
          }
          return;
        }
      }
    } finally {
      queue.draining = false;
    }
  }

  // ---- connecting -------------------------------------------------------------------------

  teardown() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.retryAt = null;
    this.stopPing();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(1000);
      } catch {
        // already closed
      }
    }
    if (this.pollAbort) {
      this.pollAbort.abort();
      this.pollAbort = null;
    }
    this.httpSends = { items: [], draining: false };
  }

  connect() {
    if (!this.running) return;
    this.teardown();
    const gen = ++this.generation;
    if (this.state !== "connected" && !this.probing) {
      this.setState(this.attempt ? "reconnecting" : "connecting");
    }
    if (this.transport === "ws") this.openWs(gen);
    else this.poll(gen);
  }

  // No token here: URLs land in proxy access logs. `u` lets a balancer keep a user on one
  // node (deploy/nginx.conf); the server ignores it.
  wsUrl() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const q = new URLSearchParams({ after: String(this.cb.getAfter()) });
    const user = this.cb.getUser?.();
    if (user) q.set("u", user);
    return `${proto}//${location.host}/v1/ws?${q}`;
  }

  openWs(gen) {
    let ws;
    try {
      ws = new WebSocket(this.wsUrl());
    } catch {
      this.wsFailed(gen);
      return;
    }
    this.ws = ws;
    let helloSeen = false;
    const helloTimer = setTimeout(() => {
      if (gen === this.generation && !helloSeen) {
        this.teardown();
        this.wsFailed(gen);
      }
    }, HELLO_TIMEOUT_MS);

    ws.onopen = () => {
      if (gen !== this.generation) return;
      this.sendFrame({ type: "auth", token: this.getToken() || "" });
    };
    ws.onmessage = (msg) => {
      if (gen !== this.generation) return;
      this.notePong();
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch {
        return;
      }
      if (!frame || typeof frame !== "object") return;
      // The token was refused (the auth frame failed) or revoked (logged out elsewhere).
      if (frame.type === "error" && frame.code === "unauthorized") {
        clearTimeout(helloTimer);
        this.authFailed();
        return;
      }
      if (frame.type === "hello") {
        helloSeen = true;
        clearTimeout(helloTimer);
        this.wsFailures = 0;
        this.connectedAt = Date.now();
        this.probing = false;
        this.probeDelay = WS_PROBE_FIRST_MS;
        clearTimeout(this.probeTimer);
        this.setState("connected");
        this.startPing(gen);
        this.cb.onReady?.({ transport: "ws", hello: frame });
        return;
      }
      if (typeof frame.seq === "number" && frame.type !== "sent" && frame.type !== "synced") {
        this.cb.onEvent?.(frame);
      } else {
        this.cb.onFrame?.(frame);
      }
    };
    ws.onclose = () => {
      if (gen !== this.generation) return;
      clearTimeout(helloTimer);
      this.ws = null;
      this.stopPing();
      // A socket that closes before hello without an `unauthorized` frame (a proxy refused
      // the upgrade, the server is full or down) counts as a failed try.
      if (!helloSeen) {
        this.wsFailed(gen);
        return;
      }
      // A link that stayed up a while starts the backoff afresh; one that keeps dropping
      // right after hello keeps backing off.
      if (Date.now() - this.connectedAt > STABLE_AFTER_MS) this.attempt = 0;
      this.scheduleReconnect();
    };
    ws.onerror = () => {
      // onclose follows and decides.
    };
  }

  // A WebSocket that never said hello: if the server answers plain HTTP, something between us
  // and it blocks WebSockets, so after two such failures in a row switch to long-poll.
  async wsFailed(gen) {
    if (gen !== this.generation || !this.running) return;
    if (this.probing) {
      this.probing = false;
      this.transport = "poll";
      this.probeDelay = Math.min(this.probeDelay * 2, WS_PROBE_MAX_MS);
      this.connect();
      return;
    }
    const up = await this.api.healthy();
    if (gen !== this.generation || !this.running) return;
    if (!up) {
      this.scheduleReconnect();
      return;
    }
    this.wsFailures++;
    if (this.wsFailures >= WS_FAILURES_BEFORE_POLL) {
      this.transport = "poll";
      this.connect();
    } else {
      this.scheduleReconnect();
    }
  }

  startPing(gen) {
    this.stopPing();
    this.pingTimer = setInterval(() => {
      if (gen !== this.generation) return;
      if (!this.sendFrame({ type: "ping" })) return;
      if (!this.pongTimer) {
        this.pongTimer = setTimeout(() => {
          // No frame at all for a while: the link is dead even if the socket has not noticed.
          if (gen !== this.generation) return;
          this.teardown();
          this.scheduleReconnect();
        }, PONG_TIMEOUT_MS);
      }
    }, PING_EVERY_MS);
  }

  notePong() {
    clearTimeout(this.pongTimer);
    this.pongTimer = null;
  }

  stopPing() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
    this.notePong();
  }

  async poll(gen) {
    let first = true;
    while (gen === this.generation && this.running) {
      const ctrl = new AbortController();
      this.pollAbort = ctrl;
      let res;
      try {
        res = await this.api.events(this.cb.getAfter(), {
          wait: first ? 0 : POLL_WAIT_S,
          limit: POLL_LIMIT,
          signal: ctrl.signal,
        });
      } catch (err) {
        if (gen !== this.generation) return;
        if (err instanceof ApiError && err.status === 401) {
          this.authFailed();
          return;
        }
        if (err instanceof ApiError || err instanceof NetworkError) {
          this.pollAbort = null;
          this.scheduleReconnect();
          return;
        }
        return; // aborted by teardown
      }
      if (gen !== this.generation) return;
      for (const ev of res.events || []) this.cb.onEvent?.(ev);
      if (first) {
        first = false;
        this.attempt = 0;
        this.setState("connected");
        this.cb.onReady?.({ transport: "poll", hello: null });
        this.scheduleProbe();
      }
    }
  }

  // While on long-poll, try the WebSocket again now and then: the block may have been lifted.
  scheduleProbe() {
    clearTimeout(this.probeTimer);
    this.probeTimer = setTimeout(() => {
      if (!this.running || this.transport !== "poll" || this.state !== "connected") return;
      this.probing = true;
      this.transport = "ws";
      this.connect();
    }, this.probeDelay);
  }

  scheduleReconnect() {
    if (!this.running) return;
    if (this.probing) {
      this.wsFailed(this.generation);
      return;
    }
    this.teardown();
    this.attempt++;
    const delay = backoffDelay(this.attempt - 1, BACKOFF_BASE_MS, BACKOFF_MAX_MS);
    this.retryAt = Date.now() + delay;
    const offline = navigator.onLine === false || this.attempt >= OFFLINE_AFTER_ATTEMPTS;
    this.setState(offline ? "offline" : "reconnecting");
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, delay);
  }

  authFailed() {
    this.stop();
    this.cb.onAuthError?.();
  }

  setState(state) {
    this.state = state;
    this.emitStatus();
  }

  emitStatus() {
    let state = this.state;
    if (navigator.onLine === false && state !== "connected") state = "offline";
    this.cb.onStatus?.({
      state,
      transport: this.transport,
      retryAt: this.retryAt,
      attempt: this.attempt,
    });
  }
}
