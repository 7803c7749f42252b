"""The judge fields move off the project onto JudgeEndpoint rows (judging 0012, annotations 0005), and back.

Run with Django's migration executor on the test database: migrated back to before the move, rows written
with the historical models, then migrated forward (and back again).
"""

from decimal import Decimal

import pytest

from tests.migrating import migrate

BEFORE = [("annotations", "0004_history_authors_judge_url"), ("judging", "0011_gating_policy")]


@pytest.fixture
def before_the_move(transactional_db):
    apps = migrate(BEFORE)
    yield apps
    migrate()  # leave the database as every other test expects it


def test_a_project_judge_becomes_its_default_endpoint_and_a_project_without_gets_none(before_the_move):
    Project = before_the_move.get_model("annotations", "Project")
    judged = Project.objects.create(
        slug="judged",
        name="Judged",
        judge_base_url="http://vllm:8000/v1",
        judge_model="llama-405b",
        judge_api_key="sk-kept-secret",
        judge_max_in_flight=64,
        judge_price_in=Decimal("3.5"),
        judge_price_out=Decimal("4.25"),
    )
    plain = Project.objects.create(slug="plain", name="Plain", judge_max_in_flight=8)

    apps = migrate()
    JudgeEndpoint = apps.get_model("judging", "JudgeEndpoint")
    endpoint = JudgeEndpoint.objects.get(project_id=judged.pk)
    assert (endpoint.base_url, endpoint.model, endpoint.api_key) == (
        "http://vllm:8000/v1",
        "llama-405b",
        "sk-kept-secret",
    )
    assert (endpoint.max_in_flight, endpoint.price_in, endpoint.price_out) == (64, Decimal("3.5"), Decimal("4.25"))
    assert endpoint.is_default and endpoint.name == "default judge"
    assert not JudgeEndpoint.objects.filter(project_id=plain.pk).exists()
    assert JudgeEndpoint.objects.count() == 1
    columns = {f.name for f in apps.get_model("annotations", "Project")._meta.concrete_fields}
    assert not {name for name in columns if name.startswith("judge_")}

    # Backwards: the default endpoint goes back onto the project; a project without one keeps blank fields.
    JudgeEndpoint.objects.create(project_id=plain.pk, name="tier 1", base_url="http://small/v1", model="8b")
    endpoint.model = "llama-405b-v2"
    endpoint.save()
    apps = migrate(BEFORE)
    Project = apps.get_model("annotations", "Project")
    judged = Project.objects.get(slug="judged")
    assert (judged.judge_base_url, judged.judge_model, judged.judge_api_key) == (
        "http://vllm:8000/v1",
        "llama-405b-v2",
        "sk-kept-secret",
    )
    assert (judged.judge_max_in_flight, judged.judge_price_in, judged.judge_price_out) == (
        64,
        Decimal("3.5"),
        Decimal("4.25"),
    )
    plain = Project.objects.get(slug="plain")
    assert plain.judge_base_url == "" and plain.judge_model == ""  # a non-default endpoint is not the judge
