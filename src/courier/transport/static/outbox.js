// Messages typed but not yet confirmed by the server, kept in localStorage so a reload, a
// crash or a dead network loses nothing. Each entry keeps its client_id for life: the server
// answers a repeated client_id with the original `sent`, so re-sending is always safe and a
// message is never stored twice.

import { backoffDelay } from "./backoff.js";

// An entry sent without an answer is sent again after RESEND_AFTER_MS; one refused for a
// passing reason (rate limit, network) after a backoff that grows with each refusal.
const RESEND_AFTER_MS = 10000;
const RETRY_BASE_MS = 1000;
const RETRY_MAX_MS = 30000;
const WATCH_EVERY_MS = 1000;

// Codes that mean "try the same request again later"; any other refusal is final.
const RETRYABLE = new Set([
  "rate_limited",
  "too_many_requests",
  "unavailable",
  "service_unavailable",
  "backend_unavailable",
  "backend_down",
  "overloaded",
  "internal",
  "internal_error",
  "timeout",
  "too_many_connections",
  "not_connected",
]);

export function isRetryable(code) {
  return RETRYABLE.has(code) || /unavailable|timeout|overload|rate/.test(code || "");
}

export function newClientId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  let hex = "";
  for (const b of bytes) hex += b.toString(16).padStart(2, "0");
  return `w-${Date.now().toString(36)}-${hex}`;
}

export class Outbox {
  /** @param {import("./store.js").Persist} persist */
  constructor(persist) {
    this.persist = persist;
    this.conn = null;
    this.inflight = new Map(); // client_id -> {nextAt, failures}
    this.watch = null;
  }

  /** Entries in typing order; read afresh so several tabs of one user never clobber. */
  entries() {
    const list = this.persist.get("outbox", []);
    return Array.isArray(list) ? list : [];
  }

  write(list) {
    this.persist.set("outbox", list);
  }

  add(to, body) {
    const entry = { client_id: newClientId(), to, body, created: Date.now(), failed: null };
    const list = this.entries();
    list.push(entry);
    this.write(list);
    this.flush();
    return entry;
  }

  has(clientId) {
    return this.entries().some((e) => e.client_id === clientId);
  }

  remove(clientId) {
    this.inflight.delete(clientId);
    const list = this.entries();
    const kept = list.filter((e) => e.client_id !== clientId);
    if (kept.length !== list.length) this.write(kept);
  }

  setFailed(clientId, error) {
    this.inflight.delete(clientId);
    const list = this.entries();
    for (const e of list) if (e.client_id === clientId) e.failed = error;
    this.write(list);
  }

  /** Put a failed entry back in line (the user pressed "retry"). */
  retry(clientId) {
    const list = this.entries();
    for (const e of list) if (e.client_id === clientId) e.failed = null;
    this.write(list);
    this.inflight.delete(clientId);
    this.flush();
  }

  get pendingCount() {
    return this.entries().filter((e) => !e.failed).length;
  }

  attach(conn) {
    this.conn = conn;
    clearInterval(this.watch);
    this.watch = setInterval(() => this.flush(), WATCH_EVERY_MS);
  }

  detach() {
    clearInterval(this.watch);
    this.watch = null;
    this.conn = null;
    this.inflight.clear();
  }

  /**
   * Send what is waiting. `all` re-sends even entries already in flight (after a reconnect
   * their answer may have been lost with the old link); otherwise only new or stale ones.
   */
  flush(all = false) {
    const conn = this.conn;
    if (!conn || !conn.ready) return;
    const now = Date.now();
    for (const e of this.entries()) {
      if (e.failed) continue;
      const state = this.inflight.get(e.client_id) || { nextAt: 0, failures: 0 };
      if (!all && now < state.nextAt) {
        // In flight: later entries may follow it. Backing off after a refusal: they wait,
        // so the server stores messages in the order they were typed.
        if (state.failures > 0) return;
        continue;
      }
      if (!conn.sendMessage(e)) return;
      state.nextAt = now + RESEND_AFTER_MS;
      this.inflight.set(e.client_id, state);
    }
  }

  /** An error frame whose ref is one of ours. Returns true when the entry failed for good. */
  onError(clientId, code, message) {
    if (isRetryable(code)) {
      const state = this.inflight.get(clientId) || { nextAt: 0, failures: 0 };
      state.failures++;
      state.nextAt = Date.now() + backoffDelay(state.failures - 1, RETRY_BASE_MS, RETRY_MAX_MS);
      this.inflight.set(clientId, state);
      return false;
    }
    this.setFailed(clientId, message || code);
    return true;
  }
}
