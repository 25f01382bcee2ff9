// Client state: conversations, their messages, receipts, typing and the resume point (the
// highest seq processed without a gap). Pure data with change notifications; no DOM, no I/O
// beyond localStorage for what must survive a reload.

/** localStorage that never throws (private mode, quota) and namespaces keys per user. */
export class Persist {
  constructor(prefix) {
    this.prefix = prefix;
  }

  get(name, fallback = null) {
    try {
      const raw = localStorage.getItem(this.prefix + name);
      return raw === null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  }

  set(name, value) {
    try {
      localStorage.setItem(this.prefix + name, JSON.stringify(value));
    } catch {
      // Storage full or disabled: the app still works, it just forgets on reload.
    }
  }

  remove(name) {
    try {
      localStorage.removeItem(this.prefix + name);
    } catch {
      // ignore
    }
  }

  clear() {
    try {
      const doomed = [];
      for (let i = 0; i < localStorage.length; i++) {
        const key = localStorage.key(i);
        if (key && key.startsWith(this.prefix)) doomed.push(key);
      }
      for (const key of doomed) localStorage.removeItem(key);
    } catch {
      // ignore
    }
  }
}

export function userPersist(username) {
  return new Persist(`courier.u.${username}.`);
}

export const sessionPersist = new Persist("courier.");

let localOrder = 0;

/** Conversation keys are usernames or group ids; group ids start with "G", names never do. */
export const GROUP_RE = /^G[0-9a-f]{32}$/;
export const isGroupKey = (key) => GROUP_RE.test(key);

const CHANGES = {
  created: (e) => `${e.by} created the group “${e.name}”`,
  added: (e) => `${e.by} added ${e.member}`,
  removed: (e) => `${e.by} removed ${e.member}`,
  left: (e) => `${e.member} left`,
  renamed: (e) => `${e.by} renamed the group “${e.name}”`,
  role: (e) => `${e.member} is now ${e.role === "admin" ? "an admin" : `the ${e.role}`}`,
};

/** A membership event as a line of text. */
export function describeChange(ev) {
  const text = CHANGES[ev.action];
  return text ? text(ev) : "The group changed";
}

function compareMessages(a, b) {
  const as = a.seq ?? Infinity;
  const bs = b.seq ?? Infinity;
  if (as !== bs) return as - bs;
  return a.order - b.order;
}

export class Conversation {
  constructor(peer) {
    this.peer = peer;
    this.isGroup = isGroupKey(peer);
    this.name = this.isGroup ? "" : peer;
    this.group = null; // the group object (members, roles) once loaded
    this.member = true; // false once we were removed or left
    // The seq of the newest event the name came from: an older one (history, a replay)
    // does not bring back an old name.
    this.nameSeq = 0;
    this.typers = new Map(); // who -> until (ms), for the group's "bob is typing…"
    this.messages = [];
    this.bySeq = new Map();
    this.byClientId = new Map();
    this.unread = 0;
    this.activity = 0;
    // History paging: undefined = never loaded, a number = more before it, null = all loaded.
    this.cursor = undefined;
    this.loadingHistory = false;
    this.readSent = 0;
    // Incoming seqs up to here are already in `unread` (the server's count or our own).
    this.countedUpTo = 0;
    this.error = null;
  }

  get last() {
    return this.messages.length ? this.messages[this.messages.length - 1] : null;
  }

  get newestSeq() {
    for (let i = this.messages.length - 1; i >= 0; i--) {
      if (this.messages[i].seq != null) return this.messages[i].seq;
    }
    return 0;
  }

  get newestIncomingSeq() {
    for (let i = this.messages.length - 1; i >= 0; i--) {
      const m = this.messages[i];
      if (!m.outgoing && !m.system && m.seq != null) return m.seq;
    }
    return 0;
  }

  get oldestSeq() {
    for (const m of this.messages) if (m.seq != null) return m.seq;
    return null;
  }

  insert(msg) {
    let i = this.messages.length;
    while (i > 0 && compareMessages(this.messages[i - 1], msg) > 0) i--;
    this.messages.splice(i, 0, msg);
    if (msg.seq != null) this.bySeq.set(msg.seq, msg);
    if (msg.outgoing && msg.client_id) this.byClientId.set(msg.client_id, msg);
    this.activity = Math.max(this.activity, msg.ts || 0);
  }

  reposition(msg) {
    const i = this.messages.indexOf(msg);
    if (i >= 0) this.messages.splice(i, 1);
    this.insert(msg);
  }

  remove(msg) {
    const i = this.messages.indexOf(msg);
    if (i >= 0) this.messages.splice(i, 1);
    if (msg.seq != null) this.bySeq.delete(msg.seq);
    if (msg.client_id) this.byClientId.delete(msg.client_id);
  }
}

export class Store {
  constructor(me) {
    this.me = me;
    this.persist = userPersist(me);
    this.conversations = new Map();
    const saved = this.persist.get("lastSeq", null);
    this.lastSeq = typeof saved === "number" ? saved : null;
    this.ahead = new Set();
    this.receipts = this.persist.get("receipts", {}) || {};
    // group -> member -> {delivered, read}: receipts of our group messages, per member
    this.groupReceipts = this.persist.get("groupReceipts", {}) || {};
    this.listeners = new Set();
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  emit(what, peer = null) {
    for (const fn of this.listeners) fn(what, peer);
  }

  // ---- resume point -----------------------------------------------------------------------

  setLastSeq(seq) {
    this.lastSeq = seq;
    for (const s of this.ahead) if (s <= seq) this.ahead.delete(s);
    this.persist.set("lastSeq", seq);
  }

  /** Note that `seq` was processed; returns false when it already was. */
  advance(seq) {
    if (this.lastSeq === null) this.lastSeq = 0;
    if (seq <= this.lastSeq || this.ahead.has(seq)) return false;
    this.ahead.add(seq);
    let moved = false;
    while (this.ahead.has(this.lastSeq + 1)) {
      this.ahead.delete(this.lastSeq + 1);
      this.lastSeq++;
      moved = true;
    }
    if (moved) this.persist.set("lastSeq", this.lastSeq);
    return true;
  }

  get hasGap() {
    return this.ahead.size > 0;
  }

  // ---- conversations ----------------------------------------------------------------------

  conversation(peer, create = true) {
    let conv = this.conversations.get(peer);
    if (!conv && create) {
      conv = new Conversation(peer);
      this.conversations.set(peer, conv);
    }
    return conv || null;
  }

  sortedConversations() {
    return [...this.conversations.values()]
      .filter((c) => c.messages.length > 0)
      .sort((a, b) => b.activity - a.activity || a.peer.localeCompare(b.peer));
  }

  get totalUnread() {
    let n = 0;
    for (const c of this.conversations.values()) n += c.unread;
    return n;
  }

  /** The server's conversation list: authoritative for unread counts and group names. */
  applyConversations(list) {
    let head = 0;
    for (const item of list) {
      if (item.last && typeof item.last.seq === "number") head = Math.max(head, item.last.seq);
    }
    for (const item of list) {
      const conv = this.conversation(item.group || item.peer);
      if (item.group && item.name) this.setName(conv, item.name, head);
      if (item.last) {
        this.addEvent(item.last, { quiet: true });
        if (typeof item.last.seq === "number") {
          conv.countedUpTo = Math.max(conv.countedUpTo, item.last.seq);
        }
      }
      conv.unread = Math.max(0, item.unread | 0);
    }
    this.emit("conversations");
  }

  peerOf(ev) {
    if (ev.group) return ev.group;
    return ev.from === this.me ? ev.to : ev.from;
  }

  /** Name a group as of timeline `seq`, unless a newer name is known. */
  setName(conv, name, seq) {
    if (!name || seq < conv.nameSeq) return;
    conv.name = name;
    conv.nameSeq = seq;
  }

  /** A membership event: a line in the group's conversation; keeps its name and our place. */
  addChange(ev, { quiet = false } = {}) {
    const conv = this.conversation(ev.group);
    this.setName(conv, ev.name, ev.seq ?? Infinity);
    if (ev.member === this.me && (ev.action === "removed" || ev.action === "left")) {
      conv.member = false;
    } else if (ev.action === "created" || (ev.action === "added" && ev.member === this.me)) {
      conv.member = true;
    }
    conv.group = null; // members changed: loaded again when shown
    if (ev.seq != null && conv.bySeq.has(ev.seq)) return conv;
    conv.insert({
      key: `s:${ev.seq}`,
      seq: ev.seq ?? null,
      id: null,
      from: ev.by,
      to: null,
      body: describeChange(ev),
      ts: ev.ts ?? Date.now(),
      client_id: null,
      outgoing: false,
      system: true,
      state: "sent",
      error: null,
      order: localOrder++,
    });
    if (!quiet) this.emit("messages", ev.group);
    return conv;
  }

  /**
   * Add a message event (live, replayed or from history). Returns {conv, added, incoming}.
   * Nothing is added twice: seqs are unique in the timeline, and our own messages also match
   * their pending outbox copy by client_id.
   */
  addEvent(ev, { quiet = false } = {}) {
    if (ev.type === "group") {
      return { conv: this.addChange(ev, { quiet }), added: false, incoming: false };
    }
    const outgoing = ev.from === this.me;
    const peer = this.peerOf(ev);
    const conv = this.conversation(peer);
    if (ev.seq != null && conv.bySeq.has(ev.seq)) {
      return { conv, added: false, incoming: !outgoing };
    }
    if (outgoing && ev.client_id && conv.byClientId.has(ev.client_id)) {
      const msg = conv.byClientId.get(ev.client_id);
      if (msg.seq == null && ev.seq != null) {
        Object.assign(msg, {
          seq: ev.seq,
          id: ev.id,
          ts: ev.ts ?? msg.ts,
          state: "sent",
          error: null,
        });
        conv.reposition(msg);
        if (!quiet) this.emit("messages", peer);
      }
      return { conv, added: false, incoming: false };
    }
    const msg = {
      key: outgoing && ev.client_id ? `o:${ev.client_id}` : `s:${ev.seq}`,
      seq: ev.seq ?? null,
      id: ev.id ?? null,
      from: ev.from,
      to: ev.group || ev.to,
      body: String(ev.body ?? ""),
      ts: ev.ts ?? Date.now(),
      client_id: ev.client_id ?? null,
      outgoing,
      state: "sent",
      error: null,
      order: localOrder++,
    };
    conv.insert(msg);
    if (!outgoing) {
      conv.typers.delete(ev.from);
    }
    if (!quiet) this.emit("messages", peer);
    return { conv, added: true, incoming: !outgoing };
  }

  /** A message typed here that the server has not confirmed yet. */
  addPending(entry) {
    const conv = this.conversation(entry.to);
    const existing = conv.byClientId.get(entry.client_id);
    if (existing) return existing;
    const msg = {
      key: `o:${entry.client_id}`,
      seq: null,
      id: null,
      from: this.me,
      to: entry.to,
      body: entry.body,
      ts: entry.created,
      client_id: entry.client_id,
      outgoing: true,
      state: entry.failed ? "failed" : "pending",
      error: entry.failed || null,
      order: localOrder++,
    };
    conv.insert(msg);
    this.emit("messages", entry.to);
    return msg;
  }

  findOutgoing(clientId) {
    for (const conv of this.conversations.values()) {
      const msg = conv.byClientId.get(clientId);
      if (msg) return { conv, msg };
    }
    return null;
  }

  markSent(clientId, { id, seq, ts }) {
    const found = this.findOutgoing(clientId);
    if (!found) return;
    const { conv, msg } = found;
    if (msg.seq != null && msg.seq === seq) return;
    if (seq != null && conv.bySeq.has(seq) && conv.bySeq.get(seq) !== msg) {
      // The outgoing copy arrived first as an event under another key: keep that one.
      conv.remove(msg);
    } else {
      Object.assign(msg, { id, seq, ts: ts ?? msg.ts, state: "sent", error: null });
      conv.reposition(msg);
    }
    this.emit("messages", conv.peer);
  }

  markFailed(clientId, error) {
    const found = this.findOutgoing(clientId);
    if (!found) return;
    found.msg.state = "failed";
    found.msg.error = error;
    this.emit("messages", found.conv.peer);
  }

  markPending(clientId) {
    const found = this.findOutgoing(clientId);
    if (!found) return;
    found.msg.state = "pending";
    found.msg.error = null;
    this.emit("messages", found.conv.peer);
  }

  removeOutgoing(clientId) {
    const found = this.findOutgoing(clientId);
    if (!found) return;
    found.conv.remove(found.msg);
    this.emit("messages", found.conv.peer);
  }

  // ---- receipts and typing ----------------------------------------------------------------

  applyReceipt(ev) {
    if (ev.group) {
      this.applyGroupReceipt(ev);
      return;
    }
    const r = this.receipts[ev.peer] || { delivered: 0, read: 0 };
    const upTo = Number(ev.up_to) || 0;
    let changed = false;
    if (upTo > r.delivered) {
      r.delivered = upTo;
      changed = true;
    }
    if (ev.status === "read" && upTo > r.read) {
      r.read = upTo;
      changed = true;
    }
    if (!changed) return;
    this.receipts[ev.peer] = r;
    this.persist.set("receipts", this.receipts);
    this.emit("messages", ev.peer);
  }

  applyGroupReceipt(ev) {
    const members = this.groupReceipts[ev.group] || {};
    const r = members[ev.peer] || { delivered: 0, read: 0 };
    const upTo = Number(ev.up_to) || 0;
    const delivered = Math.max(r.delivered, upTo);
    const read = ev.status === "read" ? Math.max(r.read, upTo) : r.read;
    if (delivered === r.delivered && read === r.read) return;
    members[ev.peer] = { delivered, read };
    this.groupReceipts[ev.group] = members;
    this.persist.set("groupReceipts", this.groupReceipts);
    this.emit("messages", ev.group);
  }

  /** The members who read our group message `msg`, by name. */
  readBy(msg) {
    const members = (msg.seq != null && this.groupReceipts[msg.to]) || {};
    return Object.keys(members)
      .filter((name) => members[name].read >= msg.seq)
      .sort();
  }

  /** pending | failed | sent | delivered | read for outgoing messages, null for incoming. */
  statusOf(msg) {
    if (!msg.outgoing) return null;
    if (msg.state !== "sent" || msg.seq == null) return msg.state;
    if (isGroupKey(msg.to || "")) {
      const members = Object.values(this.groupReceipts[msg.to] || {});
      if (members.some((r) => msg.seq <= r.read)) return "read";
      if (members.some((r) => msg.seq <= r.delivered)) return "delivered";
      return "sent";
    }
    const r = this.receipts[msg.to];
    if (r && msg.seq <= r.read) return "read";
    if (r && msg.seq <= r.delivered) return "delivered";
    return "sent";
  }

  /** `who` types in conversation `peer` (a user, or a group) until `until` (ms). */
  setTyping(peer, until, who = "") {
    const conv = this.conversation(peer);
    conv.typers.set(who || peer, until);
    this.emit("typing", peer);
  }

  /** Who is typing in `conv` at `now`, by name. */
  typingNames(conv, now) {
    const names = [];
    for (const [who, until] of conv.typers) {
      if (until > now) names.push(who);
      else conv.typers.delete(who);
    }
    return names.sort();
  }
}
