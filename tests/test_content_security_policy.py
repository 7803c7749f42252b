"""Every HTML page sends a strict Content-Security-Policy, and no template needs it relaxed.

The browser half (no violation in Chromium on any page, nor while using them) is tests/test_csp_browser.py.
"""

import re
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from tests.site_pages import NOT_HTML, build_site, html_url_names, query, site_pages

ROOT = Path(__file__).resolve().parent.parent
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
    "base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
)


def directives(header: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in (part.strip() for part in header.split(";")) if d}


@pytest.fixture
def site(project):
    return build_site(project)


def test_every_page_sends_the_policy_to_every_persona(client, project, site):
    users = get_user_model().objects
    seen = []
    for page in site_pages(project, site):
        client.logout()
        if page.persona:
            client.force_login(users.get(username=page.persona))
        headers = {"HTTP_HX_REQUEST": "true"} if page.htmx else {}
        if page.method == "get":
            response = client.get(page.url, query(page, site), **headers)
        else:
            response = client.post(page.url, page.data, **headers)
        assert response.status_code == page.status, f"{page}: {response.status_code}"
        policy = response.get("Content-Security-Policy")
        assert policy, f"{page} sent no Content-Security-Policy"
        expected = directives(POLICY)
        if page.name == "api_docs":  # Swagger UI's icons are data: images, on that page only
            expected["img-src"] = ["'self'", "data:"]
        assert directives(policy) == expected, page
        seen.append(page)
    assert len(seen) > 100


def test_the_page_list_covers_every_url_that_answers_html(project, site):
    listed = {page.name for page in site_pages(project, site)}
    assert html_url_names() - listed == set()
    assert not set(NOT_HTML) & listed


def test_the_error_pages_and_the_lock_out_page_send_it_too(client, sme, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # quick wrong passwords
    client.force_login(sme)
    assert client.get("/projects/nowhere/").status_code == 404
    assert directives(client.get("/projects/nowhere/")["Content-Security-Policy"]) == directives(POLICY)
    client.logout()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = client.post("/login/", {"username": "sme", "password": "wrong"})
    assert response.status_code == 429
    assert directives(response["Content-Security-Policy"]) == directives(POLICY)


def test_the_api_answers_a_browser_with_json_not_an_html_page(client, sme):
    client.force_login(sme)
    response = client.get("/api/projects/", HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert client.get("/api/projects/", {"format": "api"}).status_code == 404


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"<style\b", re.I), "an inline <style>"),
    (re.compile(r"\sstyle\s*=", re.I), "a style attribute"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "an on... event handler attribute"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
    (re.compile(r"\shx-on", re.I), "an hx-on handler (needs eval)"),
    (re.compile(r"hx-(vals|vars)\s*=\s*['\"]\s*js:", re.I), "hx-vals js: (needs eval)"),
]


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "templates").rglob("*.html")), ids=str
)
def test_no_template_has_inline_script_style_or_handlers(path):
    text = (ROOT / path).read_text()
    for pattern, what in INLINE:
        match = pattern.search(text)
        assert not match, f"{path} has {what}: {match and match.group(0)!r}"


def test_no_python_code_writes_inline_style_or_script_into_html():
    for path in sorted(ROOT.glob("*/*.py")):
        if path.parts[-2] in ("tests", "bench", ".venv") or "migrations" in path.parts:
            continue
        text = path.read_text()
        assert not re.search(r"""<[a-z]+[^>]*\sstyle=|<script>|<style>""", text), path
