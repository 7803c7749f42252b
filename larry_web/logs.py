"""A logging filter that blanks credentials, wherever a log line would carry them.

Larry never logs a judge's API key itself, but a library may: an HTTP
client's exception repr can hold the request's headers, and Celery logs the
repr of a task's exception. This filter, on every handler of the web and the
worker processes, rewrites the value of an ``Authorization`` header or a
``Bearer`` token, in the message and in the traceback, as ``[redacted]``.
"""

import logging
import re
import traceback

# "Bearer sk-...", and an authorization header's value as dict or header text prints it.
_SECRET = re.compile(r"(?i)(\bbearer\s+|\bauthorization['\"]?\s*[:=]\s*['\"]?(?:bearer\s+|basic\s+)?)[^\s'\",}\]]{4,}")


def redact(text: str) -> str:
    """``text`` with every bearer token or authorization value replaced by ``[redacted]``."""
    return _SECRET.sub(r"\1[redacted]", text)


class RedactSecrets(logging.Filter):
    """Rewrites a record whose message or traceback carries a credential; lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format: leave it to the handler
            return True
        if _SECRET.search(message):
            record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(text)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def add_to_all_handlers() -> None:
    """Put ``RedactSecrets`` on every handler of the root logger and of Celery's loggers (Celery installs
    its own handlers when a worker starts, after Django's LOGGING is applied)."""
    loggers = [logging.getLogger(), logging.getLogger("celery"), logging.getLogger("celery.task")]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets())
