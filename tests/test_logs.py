"""Credentials never reach a log line (larry_web/logs.py), in the web process or a Celery worker."""

import logging
import subprocess
import sys
from pathlib import Path

from larry_web.logs import RedactSecrets, redact

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-larry-0123456789abcdef"


def test_a_bearer_token_or_an_authorization_value_is_redacted_in_messages_and_tracebacks():
    assert redact(f"headers={{'authorization': 'Bearer {SECRET}', 'x': 1}}") == (
        "headers={'authorization': 'Bearer [redacted]', 'x': 1}"
    )
    assert redact(f"Authorization: Basic {SECRET}") == "Authorization: Basic [redacted]"
    assert redact("no secret here, only a bearer of news") == "no secret here, only a bearer of news"
    try:
        raise RuntimeError(f"request failed: {{'Authorization': 'Bearer {SECRET}'}}")
    except RuntimeError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "task raised: %r", (SECRET,), sys.exc_info())
    # An argument that is only the bare key, without a header name, is not recognisable; the header is.
    record.args = (f"Bearer {SECRET}",)
    assert RedactSecrets().filter(record)
    assert SECRET not in record.getMessage() and SECRET not in record.exc_text


def test_a_celery_workers_handlers_redact_too():
    """Celery replaces the root handlers when a worker starts; its signal puts the filter back."""
    script = (
        "import logging, django; django.setup(); "
        "from celery.signals import after_setup_logger; from larry_web.celery import app; "
        "root = logging.getLogger(); root.handlers = [logging.StreamHandler()]; "
        "after_setup_logger.send(sender=None, logger=root, loglevel=20, logfile=None, format='', colorize=False); "
        f"logging.getLogger('celery').error('Task failed: %s', {{'authorization': 'Bearer {SECRET}'}})"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "Task failed" in result.stderr and SECRET not in result.stderr, result.stderr
