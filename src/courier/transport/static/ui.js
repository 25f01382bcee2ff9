// Rendering and DOM events. Everything a user or a peer wrote goes into the page through
// textContent only, never as HTML. Lists are updated in place (keyed), so focus, scroll
// position and screen-reader announcements survive live updates.

const $ = (id) => document.getElementById(id);

/** Create an element; string children become text nodes. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

/** Make `container`'s children exactly `items` in order, reusing elements by key. */
function reconcile(container, items, cache, keyOf, create, update) {
  const seen = new Set();
  let cursor = container.firstElementChild;
  for (const item of items) {
    const key = keyOf(item);
    seen.add(key);
    let el = cache.get(key);
    if (!el) {
      el = create(item);
      cache.set(key, el);
    }
    update(el, item);
    if (el !== cursor) container.insertBefore(el, cursor);
    else cursor = cursor.nextElementSibling;
  }
  for (const [key, el] of cache) {
    if (!seen.has(key)) {
      el.remove();
      cache.delete(key);
    }
  }
}

function sameDay(a, b) {
  return (
    a.getFullYear() === b.getFullYear() &&
    a.getMonth() === b.getMonth() &&
    a.getDate() === b.getDate()
  );
}

export function formatTime(ts) {
  const d = new Date(ts);
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (sameDay(d, new Date())) return time;
  return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

const TICKS = {
  pending: { glyph: "\u2026", label: "Sending" },
  sent: { glyph: "\u2713", label: "Sent" },
  delivered: { glyph: "\u2713\u2713", label: "Delivered" },
  read: { glyph: "\u2713\u2713", label: "Read" },
  failed: { glyph: "!", label: "Not sent" },
};

const NEAR_BOTTOM_PX = 48;
const NEAR_TOP_PX = 150;

export class UI {
  constructor(handlers) {
    this.on = handlers;
    this.messageEls = new Map();
    this.convEls = new Map();
    this.renderedPeer = null;
    this.statusTimer = null;
    this.bind();
  }

  bind() {
    const form = $("login-form");
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const action = e.submitter && e.submitter.value === "register" ? "register" : "login";
      this.on.login(
        action,
        $("login-username").value.trim().toLowerCase(),
        $("login-password").value,
      );
    });
    $("logout").addEventListener("click", () => this.on.logout());
    $("conn-retry").addEventListener("click", () => this.on.retryConnection());
    $("new-chat").addEventListener("submit", (e) => {
      e.preventDefault();
      this.on.startChat($("new-chat-username").value.trim().toLowerCase());
    });

    const input = $("composer-input");
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.submitComposer();
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.submitComposer();
      }
    });
    input.addEventListener("input", () => {
      this.autosize();
      if (input.value) this.on.typing();
    });

    const list = $("messages");
    list.addEventListener("scroll", () => {
      if (list.scrollTop < NEAR_TOP_PX) this.on.nearTop();
      if (this.isNearBottom()) {
        $("jump-bottom").hidden = true;
        this.on.seen();
      }
    });
    $("jump-bottom").addEventListener("click", () => {
      this.scrollToBottom();
      input.focus();
    });

    $("message-items").addEventListener("click", (e) => {
      const btn = e.target.closest("button[data-action]");
      if (!btn) return;
      const item = btn.closest("[data-client-id]");
      if (!item) return;
      if (btn.dataset.action === "retry") this.on.retryMessage(item.dataset.clientId);
      else if (btn.dataset.action === "discard") this.on.discardMessage(item.dataset.clientId);
    });
  }

  submitComposer() {
    const input = $("composer-input");
    const text = input.value;
    if (!text.trim()) return;
    if (this.on.send(text) !== false) {
      input.value = "";
      this.autosize();
    }
  }

  autosize() {
    const input = $("composer-input");
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
  }

  // ---- screens ----------------------------------------------------------------------------

  showLogin(message = "") {
    $("app").dataset.screen = "login";
    $("loading").hidden = true;
    $("main").hidden = true;
    $("login").hidden = false;
    $("login-password").value = "";
    this.setLoginError(message);
    this.setLoginBusy(false);
    $("login-username").focus();
  }

  setLoginBusy(busy) {
    for (const id of ["login-submit", "register-submit"]) $(id).disabled = busy;
    $("login-form").setAttribute("aria-busy", busy ? "true" : "false");
  }

  setLoginError(text) {
    $("login-error").textContent = text || "";
  }

  showMain(me) {
    $("app").dataset.screen = "main";
    $("loading").hidden = true;
    $("login").hidden = true;
    $("main").hidden = false;
    $("me").textContent = me;
    $("logout").setAttribute("aria-label", `Log out ${me}`);
    $("logout").title = `Log out ${me}`;
    this.messageEls.clear();
    this.convEls.clear();
    $("message-items").replaceChildren();
    $("conversations").replaceChildren();
    this.renderedPeer = null;
  }

  setNewChatError(text) {
    $("new-chat-error").textContent = text || "";
  }

  setChatError(text) {
    $("chat-error").textContent = text || "";
  }

  // ---- connection indicator ---------------------------------------------------------------

  renderStatus({ state, transport, retryAt }) {
    const box = $("conn-status");
    box.dataset.state = state;
    box.dataset.transport = transport;
    clearInterval(this.statusTimer);
    let text;
    if (state === "connected") text = transport === "poll" ? "Connected (long-poll)" : "Connected";
    else if (state === "connecting") text = "Connecting\u2026";
    else if (state === "offline") text = "Offline";
    else text = "Reconnecting";
    // The live region gets the state only; the countdown beside it is for the eyes.
    if ($("conn-text").textContent !== text) $("conn-text").textContent = text;
    const countdown = () => {
      const secs = retryAt ? Math.ceil((retryAt - Date.now()) / 1000) : 0;
      let hint = "";
      if (state === "offline") hint = secs > 0 ? `, retrying in ${secs}s` : ", retrying\u2026";
      else if (state === "reconnecting") hint = secs > 0 ? ` in ${secs}s` : "\u2026";
      $("conn-countdown").textContent = hint;
    };
    countdown();
    $("conn-retry").hidden = state === "connected" || state === "connecting";
    if (state !== "connected" && retryAt) this.statusTimer = setInterval(countdown, 1000);
  }

  // ---- conversation list ------------------------------------------------------------------

  renderConversations(store, currentPeer) {
    const convs = store.sortedConversations();
    $("no-conversations").hidden = convs.length > 0;
    reconcile(
      $("conversations"),
      convs,
      this.convEls,
      (c) => c.peer,
      (c) => {
        const link = h(
          "a",
          { class: "conv", href: `#/chat/${encodeURIComponent(c.peer)}` },
          h("span", { class: "conv-peer" }),
          h("time", { class: "conv-time" }),
          h("span", { class: "conv-last" }),
          h("span", { class: "conv-unread" }),
        );
        return h("li", { "data-peer": c.peer }, link);
      },
      (li, c) => {
        const link = li.firstElementChild;
        const last = c.last;
        const [peerEl, timeEl, lastEl, unreadEl] = link.children;
        peerEl.textContent = c.isGroup ? c.name || "Group" : c.peer;
        timeEl.textContent = last ? formatTime(last.ts) : "";
        if (last) timeEl.dateTime = new Date(last.ts).toISOString();
        let preview = "";
        if (last && last.system) preview = last.body;
        else if (last && last.outgoing) preview = `You: ${last.body}`;
        else if (last) preview = c.isGroup ? `${last.from}: ${last.body}` : last.body;
        lastEl.textContent = preview;
        if (unreadEl.dataset.count !== String(c.unread)) {
          unreadEl.dataset.count = String(c.unread);
          unreadEl.replaceChildren();
          if (c.unread) {
            const label = h("span", { class: "visually-hidden", text: " unread" });
            unreadEl.append(String(c.unread), label);
          }
        }
        unreadEl.hidden = !c.unread;
        if (c.peer === currentPeer) link.setAttribute("aria-current", "page");
        else link.removeAttribute("aria-current");
      },
    );
    const total = store.totalUnread;
    document.title = total ? `(${total}) Courier` : "Courier";
  }

  // ---- chat view --------------------------------------------------------------------------

  showChat(peer, conv = null) {
    $("app").dataset.view = peer ? "chat" : "list";
    $("chat-empty").hidden = !!peer;
    $("chat-view").hidden = !peer;
    if (!peer) {
      this.renderedPeer = null;
      return;
    }
    if (this.renderedPeer !== peer) {
      this.messageEls.clear();
      $("message-items").replaceChildren();
      $("typing").textContent = "";
      $("jump-bottom").hidden = true;
      this.setChatError("");
      this.setHistoryStatus("");
      $("composer-input").value = "";
      this.autosize();
      this.renderedPeer = peer;
    }
    this.setChatTitle(conv);
  }

  setChatTitle(conv) {
    if (!conv || conv.peer !== this.renderedPeer) return;
    $("chat-title").textContent = conv.isGroup ? conv.name || "Group" : conv.peer;
  }

  focusComposer() {
    $("composer-input").focus();
  }

  setComposerEnabled(enabled) {
    $("composer-input").disabled = !enabled;
    $("send").disabled = !enabled;
  }

  setHistoryStatus(text) {
    $("history-status").textContent = text || "";
    $("history-status").hidden = !text;
  }

  isNearBottom() {
    const el = $("messages");
    return el.scrollHeight - el.scrollTop - el.clientHeight < NEAR_BOTTOM_PX;
  }

  canScroll() {
    const el = $("messages");
    return el.scrollHeight > el.clientHeight + 1;
  }

  scrollToBottom() {
    const el = $("messages");
    el.scrollTop = el.scrollHeight;
  }

  /**
   * Render the messages of `conv`. Stays pinned to the bottom when it was there, keeps the
   * visible messages still when older ones are added on top, and otherwise offers a jump.
   */
  renderMessages(store, conv) {
    if (!conv || conv.peer !== this.renderedPeer) return;
    const el = $("messages");
    const wasAtBottom = this.isNearBottom() || this.messageEls.size === 0;
    const fromBottom = el.scrollHeight - el.scrollTop;
    const before = this.messageEls.size;
    const lastKeyBefore = $("message-items").lastElementChild?.dataset.key;

    reconcile(
      $("message-items"),
      conv.messages,
      this.messageEls,
      (m) => m.key,
      (m) => this.createMessage(m, conv.isGroup),
      (node, m) =>
        this.updateMessage(node, m, store.statusOf(m), conv.isGroup ? store.readBy(m) : null),
    );

    const lastKeyAfter = $("message-items").lastElementChild?.dataset.key;
    if (wasAtBottom) this.scrollToBottom();
    else if (this.messageEls.size !== before && lastKeyAfter === lastKeyBefore) {
      el.scrollTop = el.scrollHeight - fromBottom;
    } else if (lastKeyAfter !== lastKeyBefore) {
      $("jump-bottom").hidden = false;
    }
  }

  createMessage(m, inGroup = false) {
    if (m.system) {
      const line = h("div", { class: "msg system", "data-key": m.key }, h("p", { class: "body" }));
      line.querySelector(".body").textContent = m.body;
      return line;
    }
    const node = h(
      "div",
      { class: `msg ${m.outgoing ? "out" : "in"}`, "data-key": m.key },
      h(
        "div",
        { class: "bubble" },
        h("span", { class: "visually-hidden sender" }),
        h("p", { class: "body" }),
        h(
          "div",
          { class: "meta" },
          h("time", { class: "time" }),
          m.outgoing ? h("span", { class: "tick", role: "img" }) : null,
        ),
      ),
    );
    node.querySelector(".body").textContent = m.body;
    node.querySelector(".sender").textContent = m.outgoing ? "You: " : `${m.from}: `;
    if (inGroup && !m.outgoing) {
      // In a group every message names its author (for everyone, not only screen readers).
      const author = h("span", { class: "author", "aria-hidden": "true" });
      author.textContent = m.from;
      node.querySelector(".bubble").prepend(author);
    }
    if (m.client_id) node.dataset.clientId = m.client_id;
    return node;
  }

  updateMessage(node, m, status, readBy = null) {
    if (m.seq != null) node.dataset.seq = String(m.seq);
    const time = node.querySelector(".time");
    if (!time) return; // a membership line
    const stamp = formatTime(m.ts);
    if (time.textContent !== stamp) {
      time.textContent = stamp;
      time.dateTime = new Date(m.ts).toISOString();
    }
    if (!m.outgoing) return;
    if (readBy !== null) this.renderReadBy(node, readBy);
    const unchanged = node.dataset.status === status;
    if (unchanged && (status !== "failed" || node.querySelector(".failure"))) return;
    node.dataset.status = status;
    const tick = node.querySelector(".tick");
    const t = TICKS[status] || TICKS.sent;
    tick.textContent = t.glyph;
    tick.setAttribute("aria-label", t.label);
    tick.title = t.label;
    node.querySelector(".failure")?.remove();
    if (status === "failed") {
      node.querySelector(".bubble").append(
        h(
          "div",
          { class: "failure" },
          h("span", { text: `Not sent: ${m.error || "refused by the server"}` }),
          h("button", { type: "button", class: "link", "data-action": "retry", text: "Retry" }),
          h("button", {
            type: "button",
            class: "link",
            "data-action": "discard",
            text: "Delete",
          }),
        ),
      );
    }
  }

  /** "Read by bob, carol" under our own group message (groups of up to 100 get receipts). */
  renderReadBy(node, names) {
    const text = names.length ? `Read by ${names.join(", ")}` : "";
    let line = node.querySelector(".read-by");
    if (!text) {
      line?.remove();
      return;
    }
    if (!line) {
      line = h("p", { class: "read-by" });
      node.querySelector(".bubble").append(line);
    }
    if (line.textContent !== text) line.textContent = text;
  }

  /** "bob is typing…", "bob and carol are typing…", "4 people are typing…". */
  renderTyping(store, conv) {
    let text = "";
    if (conv && conv.peer === this.renderedPeer) {
      const names = store.typingNames(conv, Date.now());
      if (names.length === 1) text = `${names[0]} is typing\u2026`;
      else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing\u2026`;
      else if (names.length > 2) text = `${names.length} people are typing\u2026`;
    }
    if ($("typing").textContent !== text) $("typing").textContent = text;
  }
}
