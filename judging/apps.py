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
        from larry_web import background

        # After the response in a web process without a broker (larry_web.background), queued with one.
        on_ground_truth_change(lambda project_id, item_ids: background.enqueue(regate_items, project_id, item_ids))
        on_items_imported(regate_request)

        # The confidence-weighted and audit sampling designs draw on the policy's certainty and the accepted set.
        from annotations.sampling import sampling_source_register
        from judging.models import GateDecision
        from judging.selectors import policy_certainty

        sampling_source_register("certainty", lambda project: policy_certainty(project))
        sampling_source_register(
            "accepted",
            lambda project: GateDecision.objects.filter(
                item__project=project, outcome=GateDecision.Outcome.ACCEPT
            ).values_list("item_id", flat=True),
        )
