from django.apps import AppConfig


class DistillationConfig(AppConfig):
    name = "distillation"
    verbose_name = "Distillation (training sets, exports)"

    def ready(self) -> None:
        # The item page (judging) lists the training sets an item is in; judging never imports distillation.
        from distillation.selectors import item_training_sets
        from judging.items import training_sets_source_register

        training_sets_source_register(item_training_sets)

        # The items list (judging) offers "send to the teacher" on its selection; the view is distillation's.
        from judging.items import BulkActionElsewhere, bulk_action_register

        bulk_action_register(
            BulkActionElsewhere(
                "Send to the teacher",
                "distillation:teacher_run_from_items",
                "a teacher run over them (their answers judged by the gating policy when done)",
            )
        )
