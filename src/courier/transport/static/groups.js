// The group side of the chat view: the members panel (roles, add, remove, rename, leave)
// and the "New group" form. Rendering and DOM events only; app.js does the calls.

const $ = (id) => document.getElementById(id);

const ROLE_ORDER = { owner: 0, admin: 1, member: 2 };

export class GroupPanel {
  constructor(handlers) {
    this.on = handlers;
    this.gid = null;
    $("members-toggle").addEventListener("click", () => this.toggle());
    $("add-member").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("add-member-name").value.trim().toLowerCase();
      if (name) this.on.addMember(this.gid, name, $("add-member-role").value);
    });
    $("rename-group").addEventListener("submit", (e) => {
      e.preventDefault();
      this.on.renameGroup(this.gid, $("rename-group-name").value.trim());
    });
    $("leave-group").addEventListener("click", () => {
      if (window.confirm("Leave this group? You will stop getting its messages.")) {
        this.on.leaveGroup(this.gid);
      }
    });
    $("group-members").addEventListener("click", (e) => {
      const btn = e.target.closest("button[data-remove]");
      if (btn) this.on.removeMember(this.gid, btn.dataset.remove);
    });
    $("new-group").addEventListener("submit", (e) => {
      e.preventDefault();
      const members = $("new-group-members")
        .value.split(/[\s,]+/)
        .map((s) => s.trim().toLowerCase())
        .filter(Boolean);
      this.on.createGroup($("new-group-name").value.trim(), members);
    });
  }

  /** Show the panel's toggle for a group conversation (hide it all for a 1:1 one). */
  show(gid) {
    if (this.gid !== gid) {
      this.gid = gid;
      this.setOpen(false);
      this.setError("");
      $("group-members").replaceChildren();
    }
    $("members-toggle").hidden = !gid;
    if (!gid) $("group-panel").hidden = true;
  }

  toggle() {
    this.setOpen($("group-panel").hidden);
  }

  setOpen(open) {
    $("group-panel").hidden = !open;
    $("members-toggle").setAttribute("aria-expanded", open ? "true" : "false");
  }

  setError(text) {
    $("group-error").textContent = text || "";
  }

  /** The members of `group` (owner, admins, then members) as `me` may act on them. */
  render(group, me, isMember) {
    if (!group || group.id !== this.gid) return;
    const mine = group.members.find((m) => m.username === me);
    const canManage = !!mine && mine.role !== "member";
    const members = [...group.members].sort(
      (a, b) => ROLE_ORDER[a.role] - ROLE_ORDER[b.role],
    );
    const items = members.map((m) => {
      const li = document.createElement("li");
      li.dataset.member = m.username;
      const name = document.createElement("span");
      name.className = "member-name";
      name.textContent = m.username === me ? `${m.username} (you)` : m.username;
      const role = document.createElement("span");
      role.className = "member-role";
      role.dataset.role = m.role;
      role.textContent = m.role;
      li.append(name, role);
      const removable =
        canManage && m.username !== me && m.role !== "owner" &&
        (m.role !== "admin" || mine.role === "owner");
      if (removable) {
        const btn = document.createElement("button");
        btn.type = "button";
        btn.className = "link";
        btn.dataset.remove = m.username;
        btn.textContent = "Remove";
        btn.setAttribute("aria-label", `Remove ${m.username}`);
        li.append(btn);
      }
      return li;
    });
    $("group-members").replaceChildren(...items);
    $("members-toggle").textContent = `Members (${group.members.length})`;
    $("add-member").hidden = !canManage;
    $("rename-group").hidden = !canManage;
    // Only the owner names admins; an admin adds members.
    $("add-member-role").hidden = !mine || mine.role !== "owner";
    if (mine && mine.role !== "owner") $("add-member-role").value = "member";
    // Keep what is being typed; show the current name otherwise.
    const input = $("rename-group-name");
    if (document.activeElement !== input) input.value = group.name;
    $("leave-group").hidden = !isMember;
  }

  clearAddInput() {
    $("add-member-name").value = "";
    $("add-member-role").value = "member";
  }

  setNewGroupError(text) {
    $("new-group-error").textContent = text || "";
  }

  resetNewGroup() {
    $("new-group-name").value = "";
    $("new-group-members").value = "";
    $("new-group-box").open = false;
    this.setNewGroupError("");
  }
}
