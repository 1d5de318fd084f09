"""Red-team attacks on pseudonymization (`bridge.pseudonyms`): a raw IP address or e-mail
reaching the file where the field is configured, through the paths an app or an attacker
controls: ProxyFix, odd address forms, a user whose id is the e-mail, containers and odd value
types, keys spelt in another case, values dressed up as pseudonyms, truncation of non-IPs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import blinker
import pytest
from flask import Flask
from flask_login import LoginManager, login_user
from werkzeug.middleware.proxy_fix import ProxyFix

from bridge.pseudonyms import PSEUDONYM_PREFIX, Pseudonymizer
from tests.conftest import BridgedApp
from tests.test_pseudonymize import PSEUDONYM, raw_forms

PROFILE = blinker.signal("profile-updated")  # defined before init_app, as apps do
KEY = "pseudonym-key-for-attacks-0123456789abcdef"
IPV4 = "203.0.113.77"
EMAIL = "Alice.Secret@Example.org"
FIELDS = ["client.address", "user.email", "email", "user.id"]
Make = Callable[..., BridgedApp]


class Mail:
    """An object that prints as the e-mail address."""

    def __str__(self) -> str:
        return EMAIL


class EmailUser:
    """A Flask-Login user whose id is the e-mail address."""

    is_active = is_authenticated = True
    is_anonymous = False

    def get_id(self) -> str:
        return EMAIL


def shop(make_bridged: Make, proxy: bool = False, **config: Any) -> BridgedApp:
    """A bridged app with a login view and a view sending e-mails in every shape."""
    config.setdefault("BRIDGE_PSEUDONYMIZE", FIELDS)
    config.setdefault("BRIDGE_PSEUDONYMIZE_KEY", KEY)
    bridged = make_bridged(
        signals=["default", "profile-updated", "flask_login.signals:user_logged_in"], **config
    )
    app: Flask = bridged.app
    LoginManager(app).user_loader(lambda user_id: EmailUser())

    @app.post("/in")
    def sign_in() -> str:
        login_user(EmailUser())
        return "ok"

    @app.post("/profile")
    def profile() -> str:
        PROFILE.send(
            app,
            email=[EMAIL, (EMAIL.upper(),)],
            user={"email": {EMAIL}, "id": Mail()},
            Email=EMAIL,
            EMAIL=EMAIL.encode(),
            **{"User.Email": Mail()},
        )
        return "ok"

    if proxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    bridged.client = app.test_client()
    return bridged


def leaked(bridged: BridgedApp, *values: str) -> list[bytes]:
    assert bridged.bridge.flush(timeout=10.0)
    data = bridged.path.read_bytes()
    return [form for form in raw_forms(*values) if form in data]


class TestAddresses:
    def test_proxyfix_forwarded_address_is_hidden(self, make_bridged: Make) -> None:
        """Behind ProxyFix, the X-Forwarded-For address (client.address) is a pseudonym."""
        bridged = shop(make_bridged, proxy=True)
        bridged.client.post("/in", headers={"X-Forwarded-For": IPV4})
        events = bridged.events()
        assert events and all(PSEUDONYM.fullmatch(e["client.address"]) for e in events)
        assert [] == leaked(bridged, IPV4)

    @pytest.mark.parametrize("mode", ["hmac", "truncate"])
    @pytest.mark.parametrize(
        "address", ["::ffff:203.0.113.77", "fe80::1234:5678%eth0", "not-an-ip-address"]
    )
    def test_odd_address_forms_never_written_raw(
        self, make_bridged: Make, mode: str, address: str
    ) -> None:
        """An IPv4-mapped address, a zone id, or garbage as REMOTE_ADDR: never raw, either
        mode (garbage in truncate mode is hashed: it is not an address to truncate)."""
        bridged = shop(make_bridged, BRIDGE_PSEUDONYMIZE_IP=mode)
        bridged.client.post("/in", environ_base={"REMOTE_ADDR": address})
        written = {event["client.address"] for event in bridged.events()}
        assert [] == leaked(bridged, address, "203.0.113.77", "fe80::1234:5678", "eth0")
        (one,) = written
        if mode == "truncate" and address != "not-an-ip-address":
            assert one in ("203.0.113.0", "fe80::")
        else:
            assert PSEUDONYM.fullmatch(one), one


class TestValues:
    def test_a_user_whose_id_is_the_email(self, make_bridged: Make) -> None:
        """Flask-Login's get_id() returning the e-mail, `user.id` listed: a pseudonym."""
        bridged = shop(make_bridged)
        bridged.client.post("/in")
        (event,) = bridged.named("user.logged_in")
        assert PSEUDONYM.fullmatch(event["user.id"])
        assert [] == leaked(bridged, EMAIL)

    def test_containers_odd_types_and_keys_in_another_case(self, make_bridged: Make) -> None:
        """Lists, tuples, sets, bytes, objects printing as the e-mail, and keys spelt `Email`,
        `EMAIL`, `User.Email`: every one a pseudonym, the e-mail nowhere."""
        bridged = shop(make_bridged)
        bridged.client.post("/profile")
        (event,) = bridged.named("profile-updated")
        assert [] == leaked(bridged, EMAIL)
        assert PSEUDONYM.fullmatch(event["Email"]) and PSEUDONYM.fullmatch(event["EMAIL"])
        assert PSEUDONYM.fullmatch(event["User.Email"])

    def test_keys_match_whatever_their_case(self) -> None:
        """A configured name matches its key in any case, nested or flat."""
        hide = Pseudonymizer(["user.email"], KEY)
        out = hide.apply({"USER": {"Email": EMAIL}, "User.EMAIL": EMAIL, "x.user.email": EMAIL})
        assert 3 == sum(1 for text in str(out).split("'") if PSEUDONYM.fullmatch(text))

    def test_a_value_dressed_as_a_pseudonym_is_still_hidden(self) -> None:
        """`hmac:<kid>:` and 32 characters that are not hex (an e-mail padded to fit) are
        hidden, not kept as if already a pseudonym; a real pseudonym is kept as it is."""
        hide = Pseudonymizer(["email"], KEY)
        disguised = f"{PSEUDONYM_PREFIX}{hide.kid}:" + "alice@example.org".ljust(32, "_")
        real = hide.pseudonym(EMAIL)
        out = hide.apply({"email": disguised, "user": {"email": real}})
        assert PSEUDONYM.fullmatch(out["email"]) and out["email"] != disguised
        assert real == out["user"]["email"]

    def test_the_keys_of_a_mapping_under_a_listed_field(self) -> None:
        """`{"email": {"alice@...": "primary"}}`: the key is hidden as well as the value."""
        hide = Pseudonymizer(["email"], KEY)
        out = hide.apply({"by": {"email": {EMAIL: "primary", 7: None}}})
        assert [hide.pseudonym(EMAIL), hide.pseudonym(7)] == list(out["by"]["email"])
        assert EMAIL not in str(out)
