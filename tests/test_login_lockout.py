"""Log-in lock-outs (django-axes): repeated wrong passwords lock the account, and the address they came from.

Each test gets a fresh database, so the failures axes records never leak from one test to the next.
The address is the request's REMOTE_ADDR (the test client's default is 127.0.0.1).
"""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from rest_framework.authtoken.models import Token

from larry_web.login import client_ip

ATTACKER, OTHER = "203.0.113.66", "198.51.100.7"
WRONG_TRIES = 40


def log_in(client: Client, username: str, password: str, *, address: str = ATTACKER, path: str = "/login/"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def token(client: Client, username: str, password: str, *, address: str = ATTACKER):
    return client.post("/api/token/", {"username": username, "password": password}, REMOTE_ADDR=address)


def is_logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    """MD5 instead of PBKDF2's million rounds: each wrong password costs ~0.5 s otherwise, and the hasher
    is not what these tests are about."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def ana(db):
    return get_user_model().objects.create_user("ana", password="ana-right-pass-1")


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user("bob", password="bob-right-pass-1")


def test_it_refuses_the_right_password_on_the_login_page_after_40_wrong_ones(client, ana, settings):
    answers = [log_in(client, "ana", f"guess-{i}").status_code for i in range(WRONG_TRIES)]
    limit = settings.AXES_FAILURE_LIMIT
    assert answers[: limit - 1] == [200] * (limit - 1)  # the form again, with its error
    assert set(answers[limit - 1 :]) == {429}
    response = log_in(client, "ana", "ana-right-pass-1")
    assert response.status_code == 429 and not is_logged_in(client)
    page = response.content.decode()
    assert "Too many failed log-ins" in page and "15 minutes" in page


def test_it_refuses_the_right_password_on_the_admin_login_after_40_wrong_ones(client, db):
    get_user_model().objects.create_user("root", password="root-right-pass-1", is_staff=True, is_superuser=True)
    for i in range(WRONG_TRIES):
        log_in(client, "root", f"guess-{i}", path="/admin/login/")
    response = log_in(client, "root", "root-right-pass-1", path="/admin/login/")
    assert response.status_code == 429 and not is_logged_in(client)
    assert client.get("/admin/").status_code == 302  # still sent to the login


def test_it_refuses_the_right_password_on_the_token_endpoint_after_40_wrong_ones(client, ana):
    answers = [token(client, "ana", f"guess-{i}") for i in range(WRONG_TRIES)]
    assert answers[0].status_code == 400
    assert answers[-1].status_code == 429
    response = token(client, "ana", "ana-right-pass-1")
    assert response.status_code == 429 and "token" not in response.json()
    assert "Too many failed log-ins" in response.json()["detail"]
    assert int(response["Retry-After"]) == 15 * 60
    assert not Token.objects.exists()


def test_the_lock_holds_the_account_from_any_address_and_the_address_for_any_account(client, ana, bob):
    for i in range(WRONG_TRIES):
        log_in(client, "ana", f"guess-{i}", address=ATTACKER)
    # A password spray on one account from many addresses: the account is locked.
    assert log_in(Client(), "ana", "ana-right-pass-1", address=OTHER).status_code == 429
    # One address trying many accounts: the address is locked.
    assert log_in(Client(), "bob", "bob-right-pass-1", address=ATTACKER).status_code == 429
    assert token(Client(), "bob", "bob-right-pass-1", address=ATTACKER).status_code == 429
    # Another account from another address is unaffected.
    other = Client()
    assert log_in(other, "bob", "bob-right-pass-1", address=OTHER).status_code == 302 and is_logged_in(other)
    assert token(Client(), "bob", "bob-right-pass-1", address=OTHER).status_code == 200


def test_a_few_wrong_passwords_lock_nothing(client, ana, settings):
    for i in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, "ana", f"guess-{i}")
    assert log_in(client, "ana", "ana-right-pass-1").status_code == 302 and is_logged_in(client)


def test_after_the_cool_off_the_right_password_works_again(client, ana, settings):
    from axes.models import AccessAttempt
    from django.utils import timezone

    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    for i in range(WRONG_TRIES):
        log_in(client, "ana", f"guess-{i}")
    assert log_in(client, "ana", "ana-right-pass-1").status_code == 429
    # The cool-off passes (the failures moved into the past rather than a sleep: a busy machine would make a
    # short cool-off end before the check above).
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert log_in(client, "ana", "ana-right-pass-1").status_code == 302 and is_logged_in(client)
    assert token(Client(), "ana", "ana-right-pass-1").status_code == 200


def test_the_lock_out_page_and_message_say_how_long_it_lasts(client, ana, settings):
    settings.AXES_COOLOFF_TIME = timedelta(seconds=90)
    for i in range(settings.AXES_FAILURE_LIMIT):
        log_in(client, "ana", f"guess-{i}")
    assert "2 minutes" in log_in(client, "ana", "x").content.decode()
    response = token(client, "ana", "x")
    assert "2 minutes" in response.json()["detail"] and response["Retry-After"] == "90"


class Request:
    def __init__(self, **meta):
        self.META = meta


@pytest.mark.parametrize(
    ("proxies", "meta", "address"),
    [
        (0, {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}, "10.0.0.2"),  # not trusted
        (1, {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}, "203.0.113.9"),
        (1, {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "1.2.3.4, 203.0.113.9"}, "203.0.113.9"),  # spoof
        (2, {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "1.2.3.4,203.0.113.9, 10.0.0.1"}, "203.0.113.9"),
        (1, {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "2001:db8::7"}, "2001:db8::7"),
        (2, {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}, "10.0.0.2"),  # too few hops
        (1, {"REMOTE_ADDR": "10.0.0.2"}, "10.0.0.2"),  # no header: not through the proxy
        (1, {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "unknown"}, "10.0.0.2"),  # not an address
        (1, {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "203.0.113.9:4711"}, "10.0.0.2"),
    ],
)
def test_the_client_address_comes_from_x_forwarded_for_only_behind_trusted_proxies(settings, proxies, meta, address):
    settings.LARRY_TRUSTED_PROXIES = proxies
    assert client_ip(Request(**meta)) == address


def test_behind_a_trusted_proxy_clients_are_locked_out_by_their_own_address(client, ana, bob, settings):
    settings.LARRY_TRUSTED_PROXIES = 1
    proxy = "10.0.0.2"
    for i in range(WRONG_TRIES):
        client.post(
            "/login/",
            {"username": f"user{i}", "password": "x"},
            REMOTE_ADDR=proxy,
            HTTP_X_FORWARDED_FOR=f"192.0.2.{i}, {ATTACKER}",  # the attacker's own entries are not believed
        )
    locked = Client().post(
        "/login/", {"username": "ana", "password": "ana-right-pass-1"}, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=ATTACKER
    )
    assert locked.status_code == 429
    other = Client().post(
        "/login/", {"username": "bob", "password": "bob-right-pass-1"}, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=OTHER
    )
    assert other.status_code == 302


def test_hostile_token_requests_are_refused_with_400_not_500(client, db):
    deep = "[" * 100_000
    response = client.post("/api/token/", deep, content_type="application/json")
    assert response.status_code == 400 and "nested too deeply" in response.json()["detail"]
    response = client.post("/api/token/", {"username": "x" * 300, "password": "p"}, content_type="application/json")
    assert response.status_code == 400 and "at most 150 characters" in response.content.decode()
