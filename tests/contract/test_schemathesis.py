"""The HTTP API held to its own description: Schemathesis runs every operation of the
server's /openapi.json with every check, valid and invalid requests alike, then walks the
description's links (register, log in, use the token; send, then ack, read and page it) as a
state machine.

The per-operation tests need the description when pytest collects them, before any server
runs, so they take it from `build_openapi` with the test server's limits; a test checks that
the live server serves exactly that document, and the state machine loads it from the server.

Deterministic: fixed seeds, no example database. Bounded: EXAMPLES per operation and phase,
SCENARIOS of at most STEPS calls. The server runs as its own process, since Schemathesis
calls it with blocking requests.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from schemathesis.errors import FailureGroup
from schemathesis.generation.stateful.state_machine import StepInput, StepOutput

from courier.transport.openapi import Limits, build_openapi
from tests.procs import ServerProcess

SEED = 20_240_601
EXAMPLES = 50
SCENARIOS = 100
STEPS = 8
RESTARTS = 20
PASSWORD = "contract-password"
LOGOUT = "DELETE /v1/sessions/current"
WEBSOCKET = "GET /v1/ws"
STAND_IN = "the-test-users-token"
METRICS = "GET /metrics"
METRICS_TOKEN = "contract-metrics-token"
KEEPALIVE_FRONT = itertools.cycle([False, True])

# What a schema-valid request may still be refused for, by operation (400 bad_request).
STATE_REFUSALS = {
    "POST /v1/messages": "A message needs a recipient other than its sender.",
    "POST /v1/ack": "is beyond the head of your timeline",
    "POST /v1/read": "is beyond the head of your timeline",
    # A name of spaces only is valid JSON Schema (no pattern says "not only spaces" the same
    # way in every regex dialect), refused by the rules.
    "POST /v1/groups": "not only spaces",
    "PATCH /v1/groups/{id}": "not only spaces",
    # Printable text only, and a query with something to look for: rules, not schema.
    "PATCH /v1/me": "must not contain control characters",
    "GET /v1/users": "must contain a letter or a digit",
    "GET /v1/presence": "separated by commas",  # more than 100 names, or only commas
}

# Schemathesis' defaults for each check, and what this API adds on purpose:
NEGATIVE_STATUSES = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429"]
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429"]
MISSING_HEADER_STATUSES = ["400", "401", "403", "406", "415", "422"]

CONFIG: dict[str, Any] = {
    "seed": SEED,
    "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
    "checks": {
        # A body over its length (or the request over its size) is refused with 413, as the
        # contract says for "too large".
        "negative_data_rejection": {"expected-statuses": [*NEGATIVE_STATUSES, "413"]},
    },
    "operations": [
        {
            # 404 right after the group was made is the member named, not the group:
            # `unknown_user` (or `unknown_member`) for a name nobody has.
            "include-name": [
                "POST /v1/groups/{id}/members",
                "DELETE /v1/groups/{id}/members/{username}",
            ],
            "checks": {"ensure_resource_availability": {"enabled": False}},
        },
        {
            # Valid in shape, refused by state no schema can know: a send to oneself, a seq
            # beyond the head of the caller's own timeline (400 in the contract). Any other
            # 400 to valid data still fails: see `refused_only_by_state`.
            "include-name": list(STATE_REFUSALS),
            "checks": {
                "positive_data_acceptance": {"expected-statuses": [*POSITIVE_STATUSES, "400"]}
            },
        },
        {
            # RFC 6455 4.2.2: the success of a handshake is 101, and another (or no)
            # Sec-WebSocket-Version is answered 426. Schemathesis expects neither.
            "include-name": WEBSOCKET,
            "checks": {
                "not_a_server_error": {"expected-statuses": ["101", "2xx", "3xx", "4xx"]},
                "positive_data_acceptance": {"expected-statuses": ["101", *POSITIVE_STATUSES]},
                "negative_data_rejection": {
                    "expected-statuses": [*NEGATIVE_STATUSES, "413", "426"]
                },
                "missing_required_header": {"expected-statuses": [*MISSING_HEADER_STATUSES, "426"]},
            },
        },
    ],
}

LONGPOLL_MAX_WAIT = 0.2  # a held long-poll ends at once (wait is clamped to it)
SERVER_ENV = {
    "COURIER_LONGPOLL_MAX_WAIT": str(LONGPOLL_MAX_WAIT),
    # Off here: the throttles of registration and login, and the cap on connections per
    # address, have tests of their own; here they would turn most generated calls into 429s.
    "COURIER_REGISTER_RATE_PER_ADDRESS": "0",
    "COURIER_LOGIN_RATE_PER_ADDRESS": "0",
    "COURIER_LOGIN_FAILURE_RATE_PER_USER": "0",
    "COURIER_MAX_CONNECTIONS_PER_ADDRESS": "0",
    "COURIER_METRICS_TOKEN": METRICS_TOKEN,  # /metrics served on the main port too
}


@schemathesis.check
def refused_only_by_state(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A 400 to valid data is only allowed for the reason the state gives (STATE_REFUSALS)."""
    reason = STATE_REFUSALS.get(case.operation.label)
    if reason is None or case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    if response.status_code == 400:
        message = response.json()["error"]["message"]
        assert reason in message, f"Schema-valid request rejected: {message}"
    return True


@dataclass
class Live:
    """The server under test and one registered user whose token the calls carry."""

    url: str
    http: requests.Session
    username: str
    token: str = ""

    def call(self, method: str, path: str, body: dict[str, Any]) -> requests.Response:
        return self.http.request(method, self.url + path, json=body, timeout=10)

    def login(self) -> str:
        """A new session of the user: logging one out leaves the others working."""
        r = self.call("POST", "/v1/sessions", {"username": self.username, "password": PASSWORD})
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token

    def revive(self) -> None:
        """A call that ends sessions by id may have ended the shared one: log in again."""
        auth = {"Authorization": f"Bearer {self.token}"}
        r = self.http.get(self.url + "/v1/conversations?limit=1", headers=auth, timeout=10)
        if r.status_code == 401:
            self.token = self.login()


class Credentials:
    """Schemathesis auth, which leaves out the cases that test a missing or broken
    Authorization. Cases are made before the server runs (some at collection), so they carry
    a stand-in that `call` swaps for the user's token, a fresh session's for a logout, or the
    metrics token."""

    def get(self, case: schemathesis.Case, ctx: schemathesis.AuthContext) -> str:
        return STAND_IN

    def set(self, case: schemathesis.Case, data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def plain_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: no proxy from the environment
    # Schemathesis sends a session's headers as given by the caller, over the case's own
    # (requests' default `Connection: keep-alive` would replace a handshake's `Upgrade`).
    session.headers.clear()
    return session


def config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(CONFIG)


DESCRIPTION = build_openapi(Limits(longpoll_max_wait=LONGPOLL_MAX_WAIT))
schema = schemathesis.openapi.from_dict(DESCRIPTION, config=config())
schema.auth(refresh_interval=None)(Credentials)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    root: Path = tmp_path_factory.mktemp("contract")
    proc = ServerProcess(root / "data", log_path=root / "server.log", **SERVER_ENV)
    proc.start()
    http = plain_session()
    try:
        api = Live(proc.url, http, "contractor")
        r = api.call("POST", "/v1/users", {"username": api.username, "password": PASSWORD})
        assert r.status_code == 201, r.text
        api.token = api.login()
        yield api
    finally:
        http.close()
        proc.stop()


def call(case: schemathesis.Case, live: Live, **kwargs: Any) -> schemathesis.Response:
    if case.headers and case.headers.get("Authorization") == f"Bearer {STAND_IN}":
        if case.operation.label == METRICS:
            token = METRICS_TOKEN
        else:
            token = live.login() if case.operation.label == LOGOUT else live.token
        case.headers["Authorization"] = f"Bearer {token}"
    if case.operation.label == WEBSOCKET:
        # An accepted upgrade leaves a WebSocket on the connection: never pool it. Every
        # other handshake goes to the keep-alive front (after a request on the connection).
        with plain_session() as once:
            if next(KEEPALIVE_FRONT):
                once.get(live.url + "/healthz", timeout=10)
            return case.call(base_url=live.url, session=once, timeout=10, **kwargs)
    response = case.call(base_url=live.url, session=live.http, timeout=10, **kwargs)
    if case.operation.label.startswith("DELETE /v1/sessions/") and case.operation.label != LOGOUT:
        live.revive()
    return response


def test_the_server_serves_the_description_under_test(live: Live) -> None:
    served = live.http.get(live.url + "/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(DESCRIPTION))


@schema.parametrize()
def test_every_operation_keeps_to_the_description(case: schemathesis.Case, live: Live) -> None:
    response = call(case, live)
    case.validate_response(response, transport_kwargs={"base_url": live.url})


def test_linked_calls_keep_to_the_description(live: Live) -> None:
    served = schemathesis.openapi.from_url(live.url + "/openapi.json", config=config())
    # Groups' and people's operations would take most steps of the walk away from the chains
    # checked below; they are checked one by one above, and their flows in tests/e2e.
    served = served.exclude(path_regex="^/v1/(groups|me$|blocks|presence)").exclude(
        operation_id="searchUsers"
    )
    served.auth(refresh_interval=None)(Credentials)
    failures: list[str] = []
    followed: Counter[str] = Counter()

    class Workflow(served.as_state_machine()):  # type: ignore[misc]
        def step(self, input: StepInput) -> StepOutput:
            if input.transition is not None and input.is_applied:
                followed[input.transition.id] += 1
            return super().step(input)  # type: ignore[no-any-return]

        def call(self, case: schemathesis.Case, **kwargs: Any) -> schemathesis.Response:
            return call(case, live, **kwargs)

        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case,
            *args: Any,
            **kwargs: Any,
        ) -> None:
            # Collected, not raised: a failing scenario replayed against a server whose state
            # moved on would only end in Hypothesis' "flaky" error, hiding the failure.
            try:
                super().validate_response(response, case, *args, **kwargs)
            except FailureGroup as exc:
                failures.append(str(exc))

        def teardown(self) -> None:
            followed["scenarios"] += 1
            super().teardown()

    # The server's state is no part of Hypothesis' choices: a choice that led to a 201 once
    # may meet a 409 later, and when Hypothesis notices it stops ("flaky"). The walk then
    # goes on with the next seed until SCENARIOS are done.
    for attempt in range(RESTARTS):
        left = SCENARIOS - followed["scenarios"]
        if left <= 0:
            break
        settings = hypothesis.settings(
            max_examples=left,
            stateful_step_count=STEPS,
            database=None,
            deadline=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
        with contextlib.suppress(hypothesis.errors.Flaky):
            hypothesis.seed(SEED + attempt)(Workflow).run(settings=settings)
    assert not failures, "\n".join(dict.fromkeys(failures))
    assert followed.pop("scenarios") >= SCENARIOS
    # The walk reached the chains a client makes: register, log in, use the token; send, ack.
    walked = {link.split(" -> ")[1] for link in followed}
    assert {"[201] LogIn", "[201] SendToThem", "[201] Ack"} <= walked, followed
    assert walked & {"[201] Events", "[201] Conversations", "[201] LogOut"}, followed


def test_the_description_has_links_for_the_state_machine() -> None:
    """Without links the state machine above would have nothing to walk."""
    links = {
        (op["operationId"], name)
        for item in DESCRIPTION["paths"].values()
        for op in item.values()
        for answer in op["responses"].values()
        for name in answer.get("links", {})
    }
    assert {("register", "LogIn"), ("login", "LogOut"), ("send", "Ack")} <= links
