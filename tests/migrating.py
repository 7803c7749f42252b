"""Migrating the test database back and forth inside a test, with Django's migration executor."""

from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def migrate(targets=None):
    """Migrate the test database to ``targets`` (``[(app, migration name or None: before its first)]``; None:
    the latest); returns the historical apps there. Content types are read afresh afterwards."""
    executor = MigrationExecutor(connection)
    targets = targets or executor.loader.graph.leaf_nodes()
    executor.migrate(targets)
    executor.loader.build_graph()
    ContentType.objects.clear_cache()
    return executor.loader.project_state([t for t in targets if t[1] is not None]).apps
