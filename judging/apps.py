from django.apps import AppConfig


class JudgingConfig(AppConfig):
    name = "judging"
    verbose_name = "Judging (judge, label functions, gate)"

    def ready(self) -> None:
        # annotations never imports judging; it tells its listeners when SME ground truth changes or an
        # import stores new items, and the rules and the gate follow in the background.
        from annotations.services import on_ground_truth_change, on_items_imported
        from judging.services import regate_request
        from judging.tasks import regate_items

        on_ground_truth_change(lambda project_id, item_ids: regate_items.delay(project_id, item_ids))
        on_items_imported(regate_request)
