"""Reads about training sets that other apps' pages show (registered with them, so they never import this app)."""

from annotations.models import Item
from distillation.models import TrainingSetRow


def item_training_sets(item: Item) -> list[dict]:
    """The training sets (snapshots) with a row of ``item``: ``[{"id", "name", "format", "status", "url",
    "splits": ["train" | "validation", ...]}]``, newest first. The item page shows them
    (``judging.items.training_sets_source_register``)."""
    sets: dict[int, dict] = {}
    rows = TrainingSetRow.objects.filter(item=item).select_related("training_set").order_by("-training_set_id", "split")
    for row in rows:
        ts = row.training_set
        entry = sets.setdefault(
            ts.pk,
            {
                "id": ts.pk,
                "name": ts.name,
                "format": ts.get_format_display(),
                "status": ts.status,
                "url": ts.get_absolute_url(),
                "splits": [],
            },
        )
        if row.split not in entry["splits"]:
            entry["splits"].append(row.split)
    return list(sets.values())
