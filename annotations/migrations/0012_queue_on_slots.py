"""Queue membership moves from ``Item.in_sme_queue`` to the slots: an item is queued when it has slots.

A queued item without slots (only possible with ``reviews_per_item`` 0) gets one open slot first, so no item
leaves the queue. Removing the column also drops its index. Back to 0011, the column comes back set on the
items with slots (the column is added first, then the data step's reverse runs), so no item leaves the queue.
"""

from django.db import migrations

OPEN_MISSING_SLOTS = """
INSERT INTO annotations_slot (item_id, project_id, priority, done)
SELECT i.id, i.project_id, i.priority, FALSE FROM annotations_item i
WHERE i.in_sme_queue AND i.response <> ''
  AND NOT EXISTS (SELECT 1 FROM annotations_slot s WHERE s.item_id = i.id)
"""

# Back: what "queued" meant before, from the slots.
FLAG_QUEUED_ITEMS = """
UPDATE annotations_item SET in_sme_queue = TRUE
WHERE EXISTS (SELECT 1 FROM annotations_slot s WHERE s.item_id = annotations_item.id)
"""


class Migration(migrations.Migration):
    dependencies = [("annotations", "0011_project_change_account")]

    operations = [
        migrations.RunSQL(OPEN_MISSING_SLOTS, FLAG_QUEUED_ITEMS),
        migrations.RemoveField(model_name="item", name="in_sme_queue"),
    ]
