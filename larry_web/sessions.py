"""The session store: Django's database sessions, saved without waiting for the disk (``SESSION_ENGINE``)."""

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import router, transaction

from larry_web.db import commit_without_waiting


class SessionStore(DatabaseSessionStore):
    """Database sessions whose saves commit asynchronously on PostgreSQL (``larry_web.db.commit_without_waiting``).

    A session holds the log-in and, on the review screen, the SME's undo stack and decision count, saved on
    every decision; a crash can lose at most the last fraction of a second of those (the SME's decisions
    themselves are durable rows), which costs a WAL flush less on each decision.
    """

    def save(self, must_create: bool = False) -> None:
        using = router.db_for_write(self.model, instance=None)
        with transaction.atomic(using=using):
            commit_without_waiting(using)
            super().save(must_create=must_create)
