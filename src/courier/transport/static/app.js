// Wiring: session, routing and the flow of events between the connection, the store, the
// outbox and the page. Each of those knows nothing of the others; this module connects them.

import { Api, ApiError, NetworkError } from "./api.js";
import { backoffDelay } from "./backoff.js";
import { Connection } from "./connection.js";
import { Outbox } from "./outbox.js";
import { GroupPanel } from "./groups.js";
import { Store, isGroupKey, sessionPersist } from "./store.js";
import { UI } from "./ui.js";

const USERNAME_RE = /^[a-z0-9][a-z0-9_.-]{2,31}$/;
const TYPING_SEND_EVERY_MS = 3000;
const TYPING_SHOW_MS = 5000;
const ACK_DELAY_MS = 150;
const GAP_WAIT_MS = 1500;
const HISTORY_PAGE = 50;
// A browser's first login replays this many of the newest timeline events, so ticks of recent
// messages are right from the start (receipts are events too).
const FIRST_REPLAY = 200;

let session = sessionPersist.get("session", null);
const api = new Api(() => (session ? session.token : null));

let store = null;
let outbox = null;
let conn = null;
let current = null;
let live = false;
let acked = 0;
let replayUntil = 0;
let ackTimer = null;
let gapTimer = null;
let renderQueued = false;
let typingSentAt = 0;
let typingTimer = null;
let unsubscribe = null;

const ui = new UI({
  login,
  logout,
  retryConnection: () => conn && conn.retryNow(),
  startChat,
  send,
  typing: sendTyping,
  nearTop: () => current && loadHistory(store.conversation(current)),
  seen: () => maybeMarkRead(),
  retryMessage,
  discardMessage,
});

const groups = new GroupPanel({
  createGroup,
  addMember: (gid, name, role) =>
    changeMembers(gid, () => api.addMember(gid, name, role), true),
  renameGroup,
  removeMember: (gid, name) => changeMembers(gid, () => api.removeMember(gid, name)),
  leaveGroup: (gid) => changeMembers(gid, () => api.removeMember(gid, store.me)),
});

// ---- session ----------------------------------------------------------------------------

function describeAuthError(err) {
  if (err instanceof NetworkError) {
    return "Can't reach the server. Check your connection and try again.";
  }
  if (err instanceof ApiError) {
    if (err.code === "invalid_credentials") return "Wrong username or password.";
    if (err.code === "username_taken") return "That username is taken. Pick another one.";
    if (err.code === "rate_limited") return "Too many attempts. Wait a moment and try again.";
    return err.message || "The server refused the request.";
  }
  return "Something went wrong. Try again.";
}

async function login(action, username, password) {
  if (!USERNAME_RE.test(username)) {
    ui.setLoginError("Usernames are 3 to 32 characters: a–z, 0–9, and _ . - after the first.");
    return;
  }
  if (password.length < 8) {
    ui.setLoginError("Passwords have at least 8 characters.");
    return;
  }
  ui.setLoginBusy(true);
  ui.setLoginError("");
  try {
    if (action === "register") await api.register(username, password);
    const res = await api.login(username, password);
    session = { token: res.token, username: res.username || username };
    sessionPersist.set("session", session);
    startMain();
  } catch (err) {
    ui.setLoginBusy(false);
    ui.setLoginError(describeAuthError(err));
  }
}

async function logout() {
  const pending = outbox ? outbox.pendingCount : 0;
  if (
    pending &&
    !window.confirm(`${pending} unsent message(s) will be discarded. Log out anyway?`)
  ) {
    return;
  }
  try {
    await api.logout();
  } catch {
    // Offline or already invalid: forget the token here all the same.
  }
  if (store) store.persist.clear();
  endSession("");
}

function endSession(message) {
  stopMain();
  session = null;
  sessionPersist.remove("session");
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  ui.showLogin(message);
}

function onAuthError() {
  endSession("Your session has ended. Please log in again.");
}

// ---- main screen ------------------------------------------------------------------------

function startMain() {
  stopMain();
  const me = session.username;
  store = new Store(me);
  outbox = new Outbox(store.persist);
  unsubscribe = store.subscribe(onStoreChange);
  ui.showMain(me);
  for (const entry of outbox.entries()) store.addPending(entry);
  conn = new Connection(api, () => (session ? session.token : null), {
    getAfter: () => store.lastSeq ?? 0,
    getUser: () => me,
    onReady,
    onEvent,
    onFrame,
    onStatus: (s) => ui.renderStatus(s),
    onAuthError,
  });
  outbox.attach(conn);
  live = true;
  route();
  bootstrap(conn);
}

function stopMain() {
  live = false;
  if (conn) conn.stop();
  if (outbox) outbox.detach();
  if (unsubscribe) unsubscribe();
  clearTimeout(ackTimer);
  clearTimeout(gapTimer);
  clearTimeout(typingTimer);
  ackTimer = gapTimer = typingTimer = null;
  conn = outbox = store = unsubscribe = null;
  current = null;
  acked = 0;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Load the conversation list. A device that has never connected starts its live stream a
 * little before the newest event the list shows; a known device resumes from its saved seq.
 */
async function bootstrap(myConn) {
  const fresh = store.lastSeq === null;
  if (!fresh) myConn.start();
  let attempt = 0;
  while (live && conn === myConn) {
    try {
      const res = await api.conversations();
      if (conn !== myConn) return;
      const list = res.conversations || [];
      store.applyConversations(list);
      if (fresh && store.lastSeq === null) {
        let head = 0;
        for (const c of list) {
          if (c.last && typeof c.last.seq === "number") head = Math.max(head, c.last.seq);
        }
        store.setLastSeq(Math.max(0, head - FIRST_REPLAY));
      }
      break;
    } catch (err) {
      if (conn !== myConn) return;
      if (err instanceof ApiError && err.status === 401) {
        onAuthError();
        return;
      }
      if (err instanceof ApiError && err.status < 500 && err.status !== 429) break;
      // Before the first connection the indicator is ours to set; after it, the link's.
      const delay = backoffDelay(attempt++, 500, 10000);
      if (fresh) {
        const retryAt = Date.now() + delay;
        ui.renderStatus({ state: "reconnecting", transport: myConn.transport, retryAt });
      }
      await sleep(delay);
    }
  }
  if (fresh && live && conn === myConn) {
    if (store.lastSeq === null) store.setLastSeq(0);
    myConn.start();
  }
}

// ---- events from the server ---------------------------------------------------------------

function onReady({ hello }) {
  if (
    hello &&
    typeof hello.last_seq === "number" &&
    store.lastSeq !== null &&
    hello.last_seq < store.lastSeq
  ) {
    // The server's timeline is shorter than what we processed (its data was reset):
    // follow the server from here on.
    store.setLastSeq(hello.last_seq);
  }
  acked = 0;
  replayUntil = hello && typeof hello.last_seq === "number" ? hello.last_seq : 0;
  scheduleAck();
  outbox.flush(true);
  if (current) store.conversation(current).readSent = 0;
  maybeMarkRead();
}

function onEvent(ev) {
  if (!store || typeof ev.seq !== "number") return;
  if (!store.advance(ev.seq)) return;
  if (ev.type === "group") {
    const conv = store.addEvent(ev).conv;
    if (current === conv.peer) loadGroup(conv);
  } else if (ev.type === "message") {
    const { conv, added, incoming } = store.addEvent(ev);
    if (!incoming && ev.client_id && outbox.has(ev.client_id)) outbox.remove(ev.client_id);
    if (added && incoming && ev.seq > conv.countedUpTo) {
      conv.countedUpTo = ev.seq;
      conv.unread++;
    }
  } else if (ev.type === "receipt") {
    store.applyReceipt(ev);
  }
  scheduleAck();
  watchGap();
}

function onFrame(frame) {
  if (!store) return;
  switch (frame.type) {
    case "sent":
      if (!frame.client_id) return;
      outbox.remove(frame.client_id);
      store.markSent(frame.client_id, frame);
      if (typeof frame.seq === "number") {
        store.advance(frame.seq);
        scheduleAck();
        watchGap();
      }
      break;
    case "typing":
      if (frame.from) {
        store.setTyping(frame.group || frame.from, Date.now() + TYPING_SHOW_MS, frame.from);
        clearTimeout(typingTimer);
        typingTimer = setTimeout(queueRender, TYPING_SHOW_MS + 50);
      }
      break;
    case "error":
      if (frame.ref && outbox.has(frame.ref)) {
        if (outbox.onError(frame.ref, frame.code, frame.message)) {
          store.markFailed(frame.ref, describeSendError(frame.code, frame.message));
        }
      } else if (frame.code) {
        console.warn("courier:", frame.code, frame.message || "");
      }
      break;
    case "synced":
      if (frame.more) conn.sync(store.lastSeq ?? 0);
      break;
    default:
      break;
  }
}

function describeSendError(code, message) {
  if (code === "unknown_user") return "there is no such user";
  if (code === "unknown_group") return "you are not a member of this group";
  return message || code || "refused by the server";
}

function scheduleAck() {
  if (ackTimer) return;
  ackTimer = setTimeout(() => {
    ackTimer = null;
    const seq = store ? store.lastSeq : null;
    if (seq && seq > acked && conn && conn.ack(seq)) acked = seq;
  }, ACK_DELAY_MS);
}

// The live stream has no gaps, except that our own sends come back as `sent` frames that can
// trail other events a little. A gap that outlives that is closed by asking for a replay.
function watchGap() {
  if (!store.hasGap) {
    clearTimeout(gapTimer);
    gapTimer = null;
    return;
  }
  if (gapTimer) return;
  const armedAt = store.lastSeq ?? 0;
  gapTimer = setTimeout(() => {
    gapTimer = null;
    if (!store || !store.hasGap || !conn) return;
    const now = store.lastSeq ?? 0;
    // Still replaying what came before this connection, and moving: the replay fills it.
    if (now < replayUntil && now > armedAt) watchGap();
    else conn.sync(now);
  }, GAP_WAIT_MS);
}

// ---- rendering ----------------------------------------------------------------------------

function onStoreChange() {
  queueRender();
}

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  const run = () => {
    renderQueued = false;
    render();
  };
  if (document.visibilityState === "visible") requestAnimationFrame(run);
  else setTimeout(run, 250);
}

function render() {
  if (!store) return;
  ui.renderConversations(store, current);
  if (current) {
    const conv = store.conversation(current);
    ui.renderMessages(store, conv);
    ui.renderTyping(store, conv);
    maybeMarkRead();
    fillScreen(conv);
  }
}

// ---- chat view ----------------------------------------------------------------------------

function route() {
  if (!store) return;
  const m = /^#\/chat\/(.+)$/.exec(location.hash);
  let peer = null;
  if (m) {
    try {
      peer = decodeURIComponent(m[1]);
    } catch {
      peer = null;
    }
  }
  if (peer && !USERNAME_RE.test(peer) && !isGroupKey(peer)) peer = null;
  openChat(peer);
}

function openChat(peer) {
  current = peer;
  ui.showChat(peer, peer ? store.conversation(peer) : null);
  groups.show(peer && isGroupKey(peer) ? peer : null);
  if (!peer) {
    render();
    return;
  }
  const conv = store.conversation(peer);
  ui.setChatError(conv.error || "");
  ui.setComposerEnabled(!conv.error && conv.member);
  render();
  if (conv.cursor === undefined) loadHistory(conv);
  if (conv.isGroup) loadGroup(conv);
  if (!conv.error) ui.focusComposer();
}

/** The group's members and roles, for the panel (again after every membership event). */
async function loadGroup(conv) {
  const myStore = store;
  try {
    conv.group = await api.group(conv.peer);
    if (store !== myStore) return;
    store.setName(conv, conv.group.name, store.lastSeq ?? 0);
    conv.member = true;
  } catch (err) {
    if (store !== myStore) return;
    if (err instanceof ApiError && err.status === 404) {
      conv.group = null;
      conv.member = false;
    } else {
      return;
    }
  }
  if (current === conv.peer) {
    ui.setChatTitle(conv);
    ui.setComposerEnabled(!conv.error && conv.member);
    ui.setChatError(conv.member ? "" : "You are no longer a member of this group.");
    if (conv.group) groups.render(conv.group, store.me, conv.member);
    else groups.show(null);
  }
  queueRender();
}

async function createGroup(name, members) {
  if (!name) {
    groups.setNewGroupError("Give the group a name.");
    return;
  }
  const bad = members.find((m) => !USERNAME_RE.test(m));
  if (bad) {
    groups.setNewGroupError(`${bad} is not a username.`);
    return;
  }
  try {
    const group = await api.createGroup(name, members);
    const conv = store.conversation(group.id);
    store.setName(conv, group.name, store.lastSeq ?? 0);
    conv.group = group;
    groups.resetNewGroup();
    location.hash = `#/chat/${encodeURIComponent(group.id)}`;
  } catch (err) {
    if (err instanceof ApiError && err.code === "unknown_user") {
      groups.setNewGroupError(err.message);
    } else if (err instanceof ApiError) {
      groups.setNewGroupError(err.message || "The server refused the group.");
    } else {
      groups.setNewGroupError("Can't reach the server. Try again.");
    }
  }
}

async function renameGroup(gid, name) {
  if (!name) {
    groups.setError("Give the group a name.");
    return;
  }
  const conv = store.conversation(gid);
  if (name === conv.name) return;
  await changeMembers(gid, () => api.renameGroup(gid, name));
}

async function changeMembers(gid, call, clearInput = false) {
  groups.setError("");
  try {
    await call();
    if (clearInput) groups.clearAddInput();
    if (store) loadGroup(store.conversation(gid));
  } catch (err) {
    groups.setError(
      err instanceof ApiError ? err.message : "Can't reach the server. Try again.",
    );
  }
}

async function loadHistory(conv) {
  if (!conv || conv.loadingHistory || conv.cursor === null || conv.error) return;
  const myStore = store;
  conv.loadingHistory = true;
  if (conv.cursor !== undefined) ui.setHistoryStatus("Loading older messages\u2026");
  try {
    // What a conversation holds is complete from its oldest message up (the live stream and
    // replays have no gaps), so the next page is always the one before the oldest held.
    const page = { before: conv.oldestSeq, limit: HISTORY_PAGE };
    const res = conv.isGroup
      ? await api.groupHistory(conv.peer, page)
      : await api.history(conv.peer, page);
    if (store !== myStore) return;
    for (const ev of res.messages || []) {
      if (ev.type && ev.type !== "message" && ev.type !== "group") continue;
      store.addEvent(ev, { quiet: true });
      if (ev.from === store.me && ev.client_id && outbox.has(ev.client_id)) {
        outbox.remove(ev.client_id);
      }
    }
    conv.cursor = res.next_before ?? null;
    ui.setHistoryStatus(
      conv.cursor === null && conv.messages.length ? "Start of the conversation" : "",
    );
    store.emit("messages", conv.peer);
  } catch (err) {
    if (store !== myStore) return;
    if (err instanceof ApiError && err.status === 401) {
      onAuthError();
      return;
    }
    if (err instanceof ApiError && err.status === 404) {
      conv.error = conv.isGroup
        ? "You are not a member of this group."
        : `There is no user named ${conv.peer}.`;
      conv.cursor = null;
      if (current === conv.peer) {
        ui.setChatError(conv.error);
        ui.setComposerEnabled(false);
      }
      ui.setHistoryStatus("");
    } else {
      ui.setHistoryStatus("Couldn't load older messages. Scroll up to try again.");
    }
  } finally {
    conv.loadingHistory = false;
  }
}

/** Keep loading older pages until the list can scroll, so scroll-up paging can start. */
function fillScreen(conv) {
  if (conv.cursor === undefined || conv.cursor === null || conv.loadingHistory) return;
  if (!ui.canScroll()) loadHistory(conv);
}

function maybeMarkRead() {
  if (!store || !current || document.visibilityState !== "visible") return;
  if (!ui.isNearBottom()) return;
  const conv = store.conversation(current);
  const newestIn = conv.newestIncomingSeq;
  if (newestIn > conv.readSent && conn && conn.read(conv.peer, conv.newestSeq)) {
    conv.readSent = newestIn;
  }
  if (conv.unread) {
    conv.unread = 0;
    conv.countedUpTo = Math.max(conv.countedUpTo, newestIn);
    queueRender();
  }
}

function send(text) {
  if (!store || !current) return false;
  const conv = store.conversation(current);
  if (conv.error || !conv.member) return false;
  const entry = outbox.add(current, text);
  store.addPending(entry);
  outbox.flush();
  typingSentAt = 0;
  ui.scrollToBottom();
  return true;
}

function sendTyping() {
  if (!conn || !current) return;
  const now = Date.now();
  if (now - typingSentAt < TYPING_SEND_EVERY_MS) return;
  if (conn.typing(current)) typingSentAt = now;
}

function startChat(peer) {
  if (!USERNAME_RE.test(peer)) {
    ui.setNewChatError("Enter a username: 3 to 32 characters, a–z, 0–9, _ . -");
    return;
  }
  if (store && peer === store.me) {
    ui.setNewChatError("That's you. Pick someone else.");
    return;
  }
  ui.setNewChatError("");
  document.getElementById("new-chat-username").value = "";
  location.hash = `#/chat/${encodeURIComponent(peer)}`;
}

function retryMessage(clientId) {
  if (!outbox) return;
  store.markPending(clientId);
  outbox.retry(clientId);
}

function discardMessage(clientId) {
  if (!outbox) return;
  outbox.remove(clientId);
  store.removeOutgoing(clientId);
}

// ---- page lifecycle -------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") {
    queueRender();
    maybeMarkRead();
  }
});
window.addEventListener("storage", (e) => {
  // Another tab of the same user queued a message: show it here too.
  if (!store || !e.key || e.key !== store.persist.prefix + "outbox") return;
  for (const entry of outbox.entries()) store.addPending(entry);
});

if (session && session.token && session.username) startMain();
else ui.showLogin();
