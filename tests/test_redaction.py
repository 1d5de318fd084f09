"""What counts as a secret: sensitive keys, and secrets quoted in free text."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import redaction
from bridge.redaction import (
    DEFAULT_REDACT_TERMS,
    REDACTED,
    Scrubber,
    SensitiveKeys,
    normalize_key,
    secret_variants,
    url_secrets,
)

DEFAULTS = SensitiveKeys(DEFAULT_REDACT_TERMS)

SENSITIVE_KEYS = [
    # passwords
    "password",
    "Password",
    "newpassword",
    "passwordHash",
    "password_confirmation",
    "user[password]",
    "user%5Bpassword%5D",
    "passwd",
    "pwd",
    "MYSQL_PWD",
    "pass",
    "passphrase",
    "pin",
    "card_pin",
    "userPIN",
    "otp",
    "otp_code",
    "totp",
    # tokens, keys, credentials
    "token",
    "access_token",
    "refreshToken",
    "id_token",
    "X-Amz-Security-Token",
    "secret",
    "client_secret",
    "SECRET_KEY",
    "api_key",
    "apiKey",
    "APIKey",
    "X-Api-Key",
    "apikey",
    "private_key",
    "privateKey",
    "access_key",
    "credential",
    "credentials",
    "jwt",
    "dsn",
    # HTTP authentication and sessions
    "authorization",
    "Proxy-Authorization",
    "auth",
    "basic_auth",
    "authToken",
    "cookie",
    "Set-Cookie",
    "session",
    "sessionid",
    "PHPSESSID",
    "connect.sid",
    "csrf",
    "_csrf",
    "X-XSRF-TOKEN",
    # signed URLs (AWS SigV4, Google, Azure SAS)
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Goog-Signature",
    "X-Goog-Credential",
    "sig",
    "signature",
    # cards and identity
    "card_number",
    "cardNumber",
    "cvv",
    "cvv2",
    "cvc",
    "ssn",
    "user_ssn",
    # decided on the whole key, however long
    "x" * 300 + "_password",
]

INNOCENT_KEYS = [
    "username",
    "user_id",
    "email",
    "author",
    "authored_by",
    "authorName",
    "authors",
    "tokenizer",
    "tokenizer_name",
    "session_count",
    "token_count",
    "password_length",
    "token_type",
    "prompt_tokens",
    "completion_tokens",
    "max_tokens",
    "signal",
    "design",
    "assigned",
    "compass",
    "passenger",
    "bypass",
    "spinner",
    "opinion",
    "shipping",
    "status_code",
    "code",
    "http.response.status_code",
    "url.query",
    "keyboard",
    "primary_key",
    "cache_key",
    "description",
    "secretary",
]


class TestSensitiveKeys:
    @pytest.mark.parametrize("key", SENSITIVE_KEYS)
    def test_sensitive(self, key: str) -> None:
        """Each of these keys names a secret."""
        assert DEFAULTS(key) is True

    @pytest.mark.parametrize("key", INNOCENT_KEYS)
    def test_innocent(self, key: str) -> None:
        """None of these keys names a secret: short terms match whole words only."""
        assert DEFAULTS(key) is False

    def test_user_terms_match_the_same_way(self) -> None:
        """A configured term is normalized like a key: short ones are whole words."""
        keys = SensitiveKeys((*DEFAULT_REDACT_TERMS, "IBAN", "X-Tenant-Key"))
        assert (True, True, False) == (keys("user_iban"), keys("ibanCode"), keys("libano"))
        assert (True, True) == (keys("xTenantKey"), keys("x-tenant-key"))

    def test_answers_are_cached_but_huge_keys_are_not_kept(self) -> None:
        """The same key is answered from the cache; an attacker-sized key is not stored."""
        keys = SensitiveKeys(DEFAULT_REDACT_TERMS)
        assert keys("password") is True
        keys("z" * 100_000)
        assert ["password"] == list(keys._cache)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=30), st.text(max_size=30))
    def test_any_key_containing_password(self, before: str, after: str) -> None:
        """`password` anywhere in a key, whatever surrounds it, makes it sensitive."""
        assert DEFAULTS(f"{before}password{after}_x") is True


class TestNormalizeKey:
    def test_forms_of_one_key(self) -> None:
        """Case, separators and camelCase do not make a different key."""
        forms = {"X-Api-Key", "x_api_key", "xApiKey", "X API KEY", "x.api.key"}
        assert {"x_api_key"} == {normalize_key(form) for form in forms}


class TestSecretVariants:
    def test_bearer_and_basic(self) -> None:
        """The credential after an auth scheme counts, and a Basic one decoded too."""
        basic = base64.b64encode(b"ada:lovelace99").decode()
        assert {"Bearer abc123", "abc123"} == secret_variants("Bearer abc123")
        assert {f"Basic {basic}", basic, "ada:lovelace99", "lovelace99"} == (
            secret_variants(f"Basic {basic}")
        )

    def test_url_secrets(self) -> None:
        """A URL's password and its sensitive query values, raw and decoded."""
        url = "https://ada:p%40ss99@host/x?api_key=k3y%2Bz&page=2"
        assert {"p%40ss99", "p@ss99", "k3y%2Bz", "k3y+z"} == set(url_secrets(url))
        assert ["ghp_abcdef"] == url_secrets("https://ghp_abcdef@github.com/a/b.git")


SCRUBBED = [
    # URL credentials, whatever the scheme
    ("fetching https://ada:hunter22@db.internal/x failed", "hunter22"),
    ("redis://:s3cretpw@cache:6379/0 refused", "s3cretpw"),
    ("clone https://ghp_tok3n@github.com/a/b.git", "ghp_tok3n"),
    ("postgresql://ada:p@ss@word@db/shop", "ss@word"),
    # sensitive name=value, as in query strings and keyword reprs
    ("401 Client Error: Unauthorized for url: /api?api_key=k3yk3y&page=2", "k3yk3y"),
    ("GET /s3?X-Amz-Credential=AKIA1&X-Amz-Signature=f00dcafe", "f00dcafe"),
    ("Config(user='ada', password='hunter2')", "hunter2"),
    ('connect(password="hunter2", host="db")', "hunter2"),
    ('    conn = connect(token = "t0ken-literal")', "t0ken-literal"),
    ("form user%5Bpassword%5D=hunter2&x=1", "hunter2"),
    # dict and JSON reprs, MultiDict pairs
    ("bad payload {'user': 'ada', 'password': 'hunter2'}", "hunter2"),
    ('body {"pin": 987654, "name": "ada"}', "987654"),
    ("ImmutableMultiDict([('user', 'ada'), ('password', 'hunter2')])", "hunter2"),
    # header lines
    ("request headers:\nAuthorization: Bearer abcdef123\nAccept: */*", "abcdef123"),
    ("  X-Api-Key: k3yk3yk3y", "k3yk3yk3y"),
]

KEPT = [
    "KeyError: 'password'",
    "CSRFError: The CSRF token is missing.",
    "ValueError: invalid literal for int() with base 10: 'abc'",
    'File "/srv/shop/app.py", line 12, in login',
    "    password = request.form['password']",
    "GET /items?page=2&sort=name",
    "mail ada@example.com about https://example.com/path",
    "{'auth': {'user': 'ada'}}",
]


class TestScrubber:
    @pytest.mark.parametrize(("text", "secret"), SCRUBBED)
    def test_patterns(self, text: str, secret: str) -> None:
        """URL credentials and sensitive values are hidden in free text."""
        scrubbed = Scrubber()(text)
        assert secret not in scrubbed
        assert REDACTED in scrubbed

    @pytest.mark.parametrize("text", KEPT)
    def test_innocent_text_is_kept(self, text: str) -> None:
        """Text that quotes no secret comes back unchanged."""
        assert text == Scrubber()(text)

    def test_known_secrets_anywhere(self) -> None:
        """A configured secret is hidden wherever it appears, and so is its credential."""
        scrub = Scrubber(["Bearer s3cr3t-t0ken"]).with_secrets(["hunter2"])
        text = "invalid token s3cr3t-t0ken; int('hunter2') failed"
        assert f"invalid token {REDACTED}; int('{REDACTED}') failed" == scrub(text)

    def test_short_secrets_are_not_substrings(self) -> None:
        """A secret of three characters would mangle innocent text: it is not replaced."""
        assert "abc def" == Scrubber(["abc"])("abc def")

    def test_user_terms(self) -> None:
        """The scrubber's parameters follow the configured terms."""
        scrub = Scrubber(is_sensitive=SensitiveKeys((*DEFAULT_REDACT_TERMS, "iban")))
        assert f"iban={REDACTED}" == scrub("iban=DE89370400440532013000")

    def test_never_raises(self) -> None:
        """A scrubber that fails says less instead of raising."""

        def broken(key: str) -> bool:
            raise RuntimeError("no")

        assert "[text withheld: scrubbing failed]" == Scrubber(is_sensitive=broken)("a=b")

    def test_pathological_text_is_quick(self) -> None:
        """Long runs without separators do not make the patterns backtrack for ever."""
        text = "a" * 200_000 + "=" + "b" * 200_000 + "'" * 50_000
        assert text == Scrubber()(text)

    @pytest.mark.parametrize(
        "hostile",
        ["a." * 300_000 + "://x", "+a" * 300_000 + "://x\n", ("x-" * 30_000 + "://y ") * 10],
    )
    def test_scheme_like_runs_stay_linear(self, hostile: str) -> None:
        """Runs of URL-scheme characters before a `://` cost linear time (a CPU limit ends a
        quadratic scan: 600 KB took minutes), and the credential after them is still hidden."""
        program = (
            "import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_CPU, (20, 30))\n"
            "from bridge.redaction import Scrubber\n"
            "text = sys.stdin.read()\n"
            "sys.stdout.write(Scrubber()(text))\n"
        )
        text = hostile + " https://ada:pw-9f8e7d@db.example/"
        done = subprocess.run(
            [sys.executable, "-c", program],
            input=text,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert (0, hostile + f" https://{REDACTED}@db.example/") == (done.returncode, done.stdout)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=40), st.text(max_size=40))
    def test_a_known_secret_never_survives(self, before: str, after: str) -> None:
        """Whatever surrounds a known secret, it is gone from the scrubbed text."""
        secret = "Zq9-s3cr3t"
        assert secret not in Scrubber([secret])(before + secret + after)


class TestScrubKnown:
    def test_registered_secrets(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Registered secrets, URL credentials and sensitive parameters are hidden."""
        monkeypatch.setattr(redaction, "_known", Scrubber())
        redaction.register_secrets(["Bearer regist3red-t0k"])
        text = "401 regist3red-t0k from https://u:pw123456@h/?token=abcd1234"
        scrubbed = redaction.scrub_known(text)
        assert [] == [s for s in ("regist3red-t0k", "pw123456", "abcd1234") if s in scrubbed]
