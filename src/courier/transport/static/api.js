// REST calls of the Courier wire contract. Every failure becomes one of two errors, so callers
// can tell "the server said no" (ApiError, never retried as is) from "the network failed"
// (NetworkError, retried later with the same request).

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = code || "http_" + status;
  }
}

export class NetworkError extends Error {
  constructor(message) {
    super(message || "The server could not be reached");
    this.name = "NetworkError";
  }
}

const DEFAULT_TIMEOUT_MS = 15000;

export class Api {
  /** @param {() => string | null} getToken */
  constructor(getToken, base = "") {
    this.getToken = getToken;
    this.base = base;
  }

  async request(method, path, { body, signal, timeoutMs = DEFAULT_TIMEOUT_MS, auth = true } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = auth ? this.getToken() : null;
    if (token) headers.Authorization = `Bearer ${token}`;

    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), timeoutMs);
    const onAbort = () => ctrl.abort();
    if (signal) {
      if (signal.aborted) ctrl.abort();
      else signal.addEventListener("abort", onAbort, { once: true });
    }
    let res;
    try {
      res = await fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: ctrl.signal,
        cache: "no-store",
      });
    } catch (err) {
      if (signal && signal.aborted) throw err;
      throw new NetworkError(ctrl.signal.aborted ? "The request timed out" : undefined);
    } finally {
      clearTimeout(timer);
      if (signal) signal.removeEventListener("abort", onAbort);
    }

    if (res.status === 204) return null;
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (!res.ok) {
      const err = data && data.error ? data.error : {};
      // A proxy in front of a stopped server answers 502/504 without our error shape:
      // that is a network failure for the client, not a refusal.
      if (!data && (res.status === 502 || res.status === 504)) throw new NetworkError();
      throw new ApiError(res.status, err.code, err.message);
    }
    return data;
  }

  register(username, password) {
    return this.request("POST", "/v1/users", { body: { username, password }, auth: false });
  }

  login(username, password) {
    return this.request("POST", "/v1/sessions", { body: { username, password }, auth: false });
  }

  logout() {
    return this.request("DELETE", "/v1/sessions/current");
  }

  conversations() {
    return this.request("GET", "/v1/conversations");
  }

  history(peer, { before = null, limit = 50 } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before !== null && before !== undefined) q.set("before", String(before));
    return this.request("GET", `/v1/conversations/${encodeURIComponent(peer)}/messages?${q}`);
  }

  events(after, { wait = 0, limit = 500, signal } = {}) {
    const q = new URLSearchParams({
      after: String(after),
      wait: String(wait),
      limit: String(limit),
    });
    return this.request("GET", `/v1/events?${q}`, { signal, timeoutMs: (wait + 15) * 1000 });
  }

  sendMessage({ to, body, client_id }) {
    // A conversation key is a username or a group id ("G" and 32 hex digits).
    const target = /^G[0-9a-f]{32}$/.test(to) ? { group: to } : { to };
    return this.request("POST", "/v1/messages", { body: { ...target, body, client_id } });
  }

  ack(seq) {
    return this.request("POST", "/v1/ack", { body: { seq } });
  }

  read(peer, seq) {
    const target = /^G[0-9a-f]{32}$/.test(peer) ? { group: peer } : { peer };
    return this.request("POST", "/v1/read", { body: { ...target, seq } });
  }

  groupHistory(gid, { before = null, limit = 50 } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before !== null && before !== undefined) q.set("before", String(before));
    return this.request("GET", `/v1/groups/${encodeURIComponent(gid)}/messages?${q}`);
  }

  createGroup(name, members) {
    return this.request("POST", "/v1/groups", { body: { name, members } });
  }

  group(gid) {
    return this.request("GET", `/v1/groups/${encodeURIComponent(gid)}`);
  }

  addMember(gid, username, role = "member") {
    return this.request("POST", `/v1/groups/${encodeURIComponent(gid)}/members`, {
      body: { username, role },
    });
  }

  renameGroup(gid, name) {
    return this.request("PATCH", `/v1/groups/${encodeURIComponent(gid)}`, { body: { name } });
  }

  removeMember(gid, username) {
    const path = `/v1/groups/${encodeURIComponent(gid)}/members/${encodeURIComponent(username)}`;
    return this.request("DELETE", path);
  }

  async healthy() {
    try {
      await this.request("GET", "/healthz", { auth: false, timeoutMs: 5000 });
      return true;
    } catch (err) {
      return !(err instanceof NetworkError) && err.status < 500;
    }
  }
}
