"""Groups in the web app as three people use them: creating one, chatting with authors
shown, group typing, who has read a message, adding and removing members, renaming, a
removed member who stops getting messages, history paged by cursor, and axe-core's
accessibility checks of every group view."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from web_harness import (
    TIMEOUT_MS,
    accessibility_violations,
    log_in,
    new_username,
    screenshot,
    send,
    wait_connected,
    wait_until,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page
    from web_harness import CourierServer, NewContext


def texts(page: Page) -> list[str]:
    """Message bodies of the open chat (membership lines left out), top to bottom."""
    found: list[str] = page.eval_on_selector_all(
        "#message-items .msg:not(.system) .body", "nodes => nodes.map(n => n.textContent)"
    )
    return found


def system_lines(page: Page) -> list[str]:
    found: list[str] = page.eval_on_selector_all(
        "#message-items .msg.system .body", "nodes => nodes.map(n => n.textContent)"
    )
    return found


def wait_text(page: Page, text: str, where: str = "#message-items") -> None:
    wait_until(
        page,
        "([where, text]) => document.querySelector(where).textContent.includes(text)",
        arg=[where, text],
        timeout=TIMEOUT_MS,
    )


def open_group(page: Page, name: str) -> None:
    page.click(f'#conversations .conv-peer:text-is("{name}")')
    wait_until(
        page,
        "name => document.getElementById('chat-title').textContent === name",
        arg=name,
        timeout=TIMEOUT_MS,
    )


def assert_accessible(page: Page, what: str) -> None:
    found = accessibility_violations(page)
    assert found == [], f"{what}: " + "\n".join(found)


def test_three_people_in_a_group(courier_server: CourierServer, new_context: NewContext) -> None:
    alice, bob, carol, dave = (new_username(p) for p in ("alice", "bob", "carol", "dave"))
    for name in (bob, carol, dave):
        courier_server.register(name)
    pages = {}
    for name, phone in ((alice, False), (bob, False), (carol, True)):
        page = new_context(phone=phone).new_page()
        log_in(page, courier_server.url, name, register=name == alice)
        wait_connected(page, transport="ws")
        pages[name] = page
    a, b, c = pages[alice], pages[bob], pages[carol]

    # Alice creates the group from the sidebar.
    a.click("#new-group-box summary")
    assert_accessible(a, "the new group form")
    a.fill("#new-group-name", "Weekend trip")
    a.fill("#new-group-members", f"{bob}, {carol}")
    a.click('#new-group button[type="submit"]')
    wait_until(a, "() => document.getElementById('chat-title').textContent === 'Weekend trip'")
    wait_text(a, "created the group")
    send(a, "Who brings the tent?")

    # Bob and Carol find it in their lists, with its last message and who wrote it.
    for page in (b, c):
        page.wait_for_selector('#conversations .conv-peer:text-is("Weekend trip")')
        wait_text(page, f"{alice}: Who brings the tent?", "#conversations")
    open_group(b, "Weekend trip")
    open_group(c, "Weekend trip")
    wait_text(b, "Who brings the tent?")
    assert b.text_content("#message-items .msg.in .author") == alice

    # Carol types; Alice and Bob see who. Then Bob types too: Alice sees both.
    c.type("#composer-input", "Me")
    for page in (a, b):
        wait_until(
            page, "who => document.getElementById('typing').textContent.includes(who)", arg=carol
        )
    b.type("#composer-input", "I")
    wait_until(
        a,
        "text => document.getElementById('typing').textContent === text",
        arg=f"{bob} and {carol} are typing\u2026",
    )
    b.fill("#composer-input", "")
    c.fill("#composer-input", "Me! I have one")
    c.press("#composer-input", "Enter")
    wait_text(a, "Me! I have one")
    wait_text(b, "Me! I have one")

    # Both read it: Alice sees who.
    wait_until(
        a,
        """names => [...document.querySelectorAll('#message-items .msg.out .read-by')]
            .some(n => names.every(x => n.textContent.includes(x)))""",
        arg=[bob, carol],
        timeout=TIMEOUT_MS,
    )
    screenshot(a, "group-chat")
    screenshot(c, "group-chat-phone")
    assert_accessible(a, "a group conversation")
    assert_accessible(c, "a group conversation on a phone")

    # Alice opens the members, adds Dave and removes Carol.
    a.click("#members-toggle")
    a.wait_for_selector("#group-panel:not([hidden])")
    a.fill("#add-member-name", dave)
    a.press("#add-member-name", "Enter")
    wait_text(a, dave, "#group-members")
    wait_text(a, f"{alice} added {dave}")
    a.click(f'#group-members button[data-remove="{carol}"]')
    wait_text(a, f"{alice} removed {carol}")
    wait_until(
        a, "who => !document.getElementById('group-members').textContent.includes(who)", arg=carol
    )
    assert "Members (3)" in a.text_content("#members-toggle")
    roles = a.eval_on_selector_all(
        "#group-members li",
        "items => items.map(li => li.dataset.member + ' ' +"
        " li.querySelector('.member-role').textContent)",
    )
    assert roles == [f"{alice} owner", f"{bob} member", f"{dave} member"]
    screenshot(a, "group-members")
    assert_accessible(a, "the members panel of the owner")
    a.emulate_media(color_scheme="dark")
    assert_accessible(a, "the members panel of the owner, dark theme")
    a.emulate_media(color_scheme="light")

    # Bob is a plain member: he sees the members and roles, not the controls.
    b.click("#members-toggle")
    wait_until(
        b, "who => document.getElementById('group-members').textContent.includes(who)", arg=dave
    )
    assert b.is_hidden("#add-member") and b.is_hidden("#rename-group")
    assert b.query_selector("#group-members button[data-remove]") is None
    assert b.is_visible("#leave-group")
    screenshot(b, "group-members-member")
    assert_accessible(b, "the members panel of a member")

    # Alice renames the group: Bob's title, list and conversation follow.
    a.fill("#rename-group-name", "Beach trip")
    a.press("#rename-group-name", "Enter")
    wait_text(b, f"{alice} renamed the group \u201cBeach trip\u201d")
    wait_until(b, "() => document.getElementById('chat-title').textContent === 'Beach trip'")
    b.wait_for_selector('#conversations .conv-peer:text-is("Beach trip")')
    wait_until(a, "() => document.getElementById('chat-title').textContent === 'Beach trip'")

    # Carol learns she was removed, cannot write, and gets nothing after.
    wait_text(c, f"{alice} removed {carol}")
    c.wait_for_selector("#composer-input[disabled]")
    send(a, "Dave, welcome aboard")
    wait_text(b, "Dave, welcome aboard")
    c.wait_for_timeout(500)
    assert "Dave, welcome aboard" not in texts(c)
    assert texts(c) == ["Who brings the tent?", "Me! I have one"]
    assert system_lines(b)[-3:] == [
        f"{alice} added {dave}",
        f"{alice} removed {carol}",
        f"{alice} renamed the group \u201cBeach trip\u201d",
    ]
    assert c.text_content("#chat-title") == "Weekend trip"  # she no longer hears of it

    # Bob leaves by himself; Alice sees it.
    b.once("dialog", lambda dialog: dialog.accept())
    b.click("#leave-group")
    wait_text(a, f"{bob} left")


def test_group_history_pages_by_cursor(
    courier_server: CourierServer, new_context: NewContext
) -> None:
    """A group with more messages than one page: scrolling up loads the older pages, every
    message once, in order, each with its author."""
    alice, bob = new_username("alice"), new_username("bob")
    alice_token = courier_server.register(alice)
    bob_token = courier_server.register(bob)
    group = courier_server.call(
        "POST", "/v1/groups", {"name": "Long talk", "members": [bob]}, alice_token
    )
    expected = []
    for i in range(300):
        author, token = (alice, alice_token) if i % 3 else (bob, bob_token)
        body = f"message {i:03d} by {author}"
        courier_server.send(token, None, body, uuid.uuid4().hex, group=group["id"])
        expected.append((author, body))

    page = new_context().new_page()
    log_in(page, courier_server.url, bob)
    open_group(page, "Long talk")
    wait_text(page, "message 299")
    assert len(texts(page)) < 300  # the newest ones to start with
    for _ in range(20):
        if page.text_content("#history-status") == "Start of the conversation":
            break
        page.eval_on_selector("#messages", "el => { el.scrollTop = 0; }")
        page.wait_for_timeout(300)
    assert page.text_content("#history-status") == "Start of the conversation"
    assert texts(page) == [body for _, body in expected]
    authors = page.eval_on_selector_all(
        "#message-items .msg.in .author", "nodes => nodes.map(n => n.textContent)"
    )
    assert authors == [author for author, _ in expected if author == alice]
    assert system_lines(page) == [f"{alice} created the group \u201cLong talk\u201d"]
