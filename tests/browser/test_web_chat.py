"""The web app as two people use it: chatting both ways, coming back after being away,
watching ticks go sent -> delivered -> read, and bodies that are text, never HTML."""

from __future__ import annotations

import urllib.error
from typing import TYPE_CHECKING

import pytest
from web_harness import (
    XSS_BODY,
    accessibility_violations,
    log_in,
    message_texts,
    new_username,
    open_chat,
    screenshot,
    send,
    status_of,
    unread_badge,
    wait_connected,
    wait_for_message,
    wait_for_status,
    wait_until,
)

if TYPE_CHECKING:
    from web_harness import CourierServer, NewContext


def test_two_people_chat_both_ways(courier_server: CourierServer, new_context: NewContext) -> None:
    alice, bob = new_username("alice"), new_username("bob")
    courier_server.register(bob)
    alice_page = new_context().new_page()
    bob_page = new_context(phone=True).new_page()
    alice_page.goto(courier_server.url + "/")
    alice_page.wait_for_selector("#login-form", state="visible")
    assert accessibility_violations(alice_page) == [], "the login form"
    log_in(alice_page, courier_server.url, alice, register=True)
    log_in(bob_page, courier_server.url, bob)
    wait_connected(alice_page, transport="ws")
    wait_connected(bob_page, transport="ws")
    assert alice_page.get_attribute("#messages", "role") == "log"
    assert alice_page.get_attribute("#messages", "aria-live") == "polite"

    open_chat(alice_page, bob)
    send(alice_page, "Hi Bob, lunch at noon?")
    wait_for_status(alice_page, "Hi Bob, lunch at noon?", "delivered")

    # Bob's conversation list shows the new chat with its last message and an unread count.
    bob_page.wait_for_selector(f'#conversations li[data-peer="{alice}"]')
    assert unread_badge(bob_page, alice) == "1"
    preview = bob_page.text_content(f'#conversations li[data-peer="{alice}"] .conv-last')
    assert preview == "Hi Bob, lunch at noon?"
    bob_page.click(f'#conversations li[data-peer="{alice}"] a')
    wait_for_message(bob_page, "Hi Bob, lunch at noon?")

    # Bob types: Alice sees it, then sees the answer arrive live.
    bob_page.type("#composer-input", "Sure")
    wait_until(
        alice_page, "peer => document.getElementById('typing').textContent.includes(peer)", arg=bob
    )
    bob_page.fill("#composer-input", "Sure, see you there")
    bob_page.press("#composer-input", "Enter")
    wait_for_message(alice_page, "Sure, see you there")
    wait_until(alice_page, "!document.getElementById('typing').textContent")
    send(alice_page, "Great")
    wait_for_message(bob_page, "Great")
    wait_for_status(alice_page, "Hi Bob, lunch at noon?", "read")

    assert message_texts(alice_page) == ["Hi Bob, lunch at noon?", "Sure, see you there", "Great"]
    assert message_texts(bob_page) == ["Hi Bob, lunch at noon?", "Sure, see you there", "Great"]

    # Alice's conversation list: most recent first, last message, nothing unread.
    assert alice_page.text_content(f'#conversations li[data-peer="{bob}"] .conv-last') == (
        "You: Great"
    )
    screenshot(alice_page, "two-way-chat")
    screenshot(bob_page, "two-way-chat-phone")
    assert accessibility_violations(alice_page) == [], "a chat"
    assert accessibility_violations(bob_page) == [], "a chat on a phone"
    alice_page.emulate_media(color_scheme="dark")
    assert accessibility_violations(alice_page) == [], "a chat in the dark theme"


def test_message_sent_while_away_appears_on_return(
    courier_server: CourierServer, new_context: NewContext
) -> None:
    alice, bob = new_username("alice"), new_username("bob")
    courier_server.register(alice)
    courier_server.register(bob)
    alice_page = new_context().new_page()
    log_in(alice_page, courier_server.url, alice)
    bob_context = new_context()
    bob_page = bob_context.new_page()
    log_in(bob_page, courier_server.url, bob)
    bob_page.close()

    open_chat(alice_page, bob)
    send(alice_page, "Are you there?")
    send(alice_page, "Call me when you're back")
    wait_for_status(alice_page, "Call me when you're back", "sent")
    alice_page.wait_for_timeout(500)
    assert status_of(alice_page, "Call me when you're back") == "sent"

    bob_page = bob_context.new_page()
    bob_page.goto(courier_server.url + "/")
    wait_connected(bob_page)
    bob_page.wait_for_selector(f'#conversations li[data-peer="{alice}"]')
    wait_until(
        bob_page,
        "peer => document.querySelector(`#conversations li[data-peer='${peer}'] .conv-unread`)"
        ".dataset.count === '2'",
        arg=alice,
    )
    bob_page.click(f'#conversations li[data-peer="{alice}"] a')
    wait_for_message(bob_page, "Call me when you're back")
    assert message_texts(bob_page) == ["Are you there?", "Call me when you're back"]
    wait_for_status(alice_page, "Call me when you're back", "read")
    screenshot(bob_page, "away-and-back")


def test_ticks_go_sent_delivered_read(
    courier_server: CourierServer, new_context: NewContext
) -> None:
    alice, bob = new_username("alice"), new_username("bob")
    courier_server.register(alice)
    courier_server.register(bob)
    alice_page = new_context().new_page()
    log_in(alice_page, courier_server.url, alice)
    bob_context = new_context()
    bob_page = bob_context.new_page()
    log_in(bob_page, courier_server.url, bob)
    bob_page.close()

    open_chat(alice_page, bob)
    send(alice_page, "Tick tock")
    wait_for_status(alice_page, "Tick tock", "sent")
    alice_page.wait_for_timeout(700)
    assert status_of(alice_page, "Tick tock") == "sent", "no device of bob has it yet"
    screenshot(alice_page, "ticks-sent")

    # Bob's app comes online on the conversation list: his device acknowledges the message.
    bob_page = bob_context.new_page()
    bob_page.goto(courier_server.url + "/")
    wait_connected(bob_page)
    wait_for_status(alice_page, "Tick tock", "delivered")
    alice_page.wait_for_timeout(700)
    assert status_of(alice_page, "Tick tock") == "delivered", "bob has not opened the chat"
    screenshot(alice_page, "ticks-delivered")

    # Bob opens the conversation: it is read.
    bob_page.click(f'#conversations li[data-peer="{alice}"] a')
    wait_for_message(bob_page, "Tick tock")
    wait_for_status(alice_page, "Tick tock", "read")
    label = alice_page.get_attribute("#message-items .msg.out .tick", "aria-label")
    assert label == "Read"
    screenshot(alice_page, "ticks")


def test_body_is_shown_as_text_and_never_runs(
    courier_server: CourierServer, new_context: NewContext
) -> None:
    alice, bob = new_username("alice"), new_username("bob")
    courier_server.register(alice)
    courier_server.register(bob)
    alice_page = new_context().new_page()
    bob_page = new_context().new_page()
    log_in(alice_page, courier_server.url, alice)
    log_in(bob_page, courier_server.url, bob)

    open_chat(alice_page, bob)
    send(alice_page, XSS_BODY)
    bob_page.wait_for_selector(f'#conversations li[data-peer="{alice}"]')
    assert bob_page.text_content(f'#conversations li[data-peer="{alice}"] .conv-last') == XSS_BODY
    bob_page.click(f'#conversations li[data-peer="{alice}"] a')
    wait_for_message(bob_page, XSS_BODY)
    wait_for_status(alice_page, XSS_BODY, "read")

    for page in (alice_page, bob_page):
        assert message_texts(page) == [XSS_BODY]
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.eval_on_selector_all("#app img, #app script", "n => n.length") == 0
    screenshot(bob_page, "xss-as-text")


def test_scrolling_up_loads_older_history(
    courier_server: CourierServer, new_context: NewContext
) -> None:
    alice, bob = new_username("alice"), new_username("bob")
    courier_server.register(alice)
    bob_token = courier_server.register(bob)
    expected = [f"message {n}" for n in range(1, 301)]
    for n, body in enumerate(expected):
        courier_server.send(bob_token, alice, body, f"h{n}")

    page = new_context().new_page()
    log_in(page, courier_server.url, alice)
    page.click(f'#conversations li[data-peer="{bob}"] a')
    wait_for_message(page, "message 300")
    page.wait_for_timeout(300)
    shown = message_texts(page)
    assert shown == expected[-len(shown) :]
    assert len(shown) < len(expected), "the first page is not the whole history"

    for _ in range(10):
        if message_texts(page)[0] == "message 1":
            break
        count = len(message_texts(page))
        page.eval_on_selector("#messages", "el => { el.scrollTop = 0; }")
        wait_until(
            page, "n => document.querySelectorAll('#message-items .msg').length > n", arg=count
        )
        # The messages that were on screen stay there: the new page goes above them.
        assert page.eval_on_selector("#messages", "el => el.scrollTop") > 0
    assert message_texts(page) == expected
    assert page.text_content("#history-status") == "Start of the conversation"
    screenshot(page, "history")


def test_log_out_ends_the_session(courier_server: CourierServer, new_context: NewContext) -> None:
    alice = new_username("alice")
    courier_server.register(alice)
    context = new_context()
    page = context.new_page()

    # Creating an account with a taken name says so.
    page.goto(courier_server.url + "/")
    page.fill("#login-username", alice)
    page.fill("#login-password", "another password")
    page.click("#register-submit")
    wait_until(page, "document.getElementById('login-error').textContent.includes('taken')")

    log_in(page, courier_server.url, alice)
    other_tab = context.new_page()
    other_tab.goto(courier_server.url + "/")
    wait_connected(other_tab)
    token = page.evaluate("JSON.parse(localStorage.getItem('courier.session')).token")
    page.click("#logout")
    page.wait_for_selector("#login-form", state="visible")
    assert page.evaluate("localStorage.getItem('courier.session')") is None
    with pytest.raises(urllib.error.HTTPError) as refused:
        courier_server.call("GET", "/v1/conversations", token=token)
    assert refused.value.code == 401

    # The other tab shared the token: it finds out by itself and asks to log in again.
    other_tab.wait_for_selector("#login-form", state="visible")
    assert "session has ended" in (other_tab.text_content("#login-error") or "")

    # A reload stays logged out.
    page.reload()
    page.wait_for_selector("#login-form", state="visible")


def test_unknown_user_is_reported(courier_server: CourierServer, new_context: NewContext) -> None:
    alice = new_username("alice")
    courier_server.register(alice)
    page = new_context().new_page()
    log_in(page, courier_server.url, alice)

    page.fill("#new-chat-username", "Not A Name!")
    page.press("#new-chat-username", "Enter")
    assert "username" in (page.text_content("#new-chat-error") or "")

    ghost = new_username("ghost")
    open_chat(page, ghost)
    wait_until(
        page,
        "ghost => document.getElementById('chat-error').textContent.includes(ghost)",
        arg=ghost,
    )
    assert page.is_disabled("#composer-input")
    screenshot(page, "unknown-user")
