"""The items list and the item page, for project leads: filters, keyset pages and capped counts over a project's
items (fast at 1,000,000 items on PostgreSQL), one item's whole story, and the list's bulk actions.

Reads (``items_filtered``, ``items_page``, ``count_capped``, ``item_story``) and the one write
(``items_bulk_act``) live together because they share the filter; the views are ``judging.item_views``.

Speed (``bench/items_list.py``): every filter is a column of ``Item`` or ``GateDecision`` with an index, an
``EXISTS`` over an index (rule hits, reviews), the gating run's verdict joined once (``FilteredRelation`` on the
unique (run, item) index, sorted by ``verdict_run_confidence``), or PostgreSQL full text on a stored tsvector
column with a GIN index (``FULLTEXT_SQL``, migration judging 0016). Pages are keyset pages (``after``/``before``
a sort key, never an OFFSET), and counts stop at ``COUNT_CAP`` (then PostgreSQL's planner estimate is shown,
labelled as one): nothing counts the whole table on every page. Figures in docs/PERFORMANCE.md.
"""

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from django import forms
from django.db import connection, transaction
from django.db.models import BooleanField, Exists, F, FilteredRelation, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.functions import Left
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from annotations.models import (
    Adjudication,
    Decision,
    ImportJob,
    Item,
    Membership,
    Project,
    Review,
    ReviewChange,
    SampleDraw,
)
from annotations.queue import in_sme_queue, queue_add
from annotations.sampling import sample_draw
from annotations.selectors import ground_truth
from judging import gate
from judging.models import GateDecision, ItemBulkAction, JudgeRun, LabelFunction, RuleHit, Verdict
from judging.selectors import gating_policy

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
COUNT_CAP = 1_000  # counts stop here ("1,000 or more", with the planner's estimate), so a count stays cheap
BULK_MAX = 50_000  # items one bulk action may take
DISTINCT_MAX = 200  # task types and source models offered in the filter's lists
# The stored tsvector column of migration judging 0016 (prompt and response, their first 100,000 characters).
FULLTEXT_SQL = '"annotations_item"."search_vector" @@ websearch_to_tsquery(\'simple\'::regconfig, %s)'

Outcome, Basis = gate.Outcome, gate.Basis
UNGATED = "ungated"
OUTCOMES = [(Outcome.ACCEPT, "accepted"), (Outcome.REJECT, "rejected"), (Outcome.PENDING, "pending"),
            (UNGATED, "not yet gated")]  # fmt: skip
# What the decision rests on (gate.Basis, before any veto: a vetoed item also has its SME's or judge's basis),
# and "rule": an active rule vetoed it.
BASES = [
    ("sme", "SME ground truth"),
    ("judge", "a judge of the gating policy"),
    ("rule", "a rule's veto"),
    ("pending", "neither SMEs nor a judge (pending)"),
]
VERDICTS = [(Decision.ACCEPT, "accept"), (Decision.REJECT, "reject"), ("error", "error"), ("none", "no verdict")]
IMPORTED = "imported"  # the reviewer filter's value for imported prior labels
# Sort name -> ((field, descending), ...): the keyset, unique per project (id, or external_id), tie-broken by id.
SORTS = {
    "-id": (("id", True),),
    "id": (("id", False),),
    "external_id": (("external_id", False),),
    "-external_id": (("external_id", True),),
    "-confidence": (("v__confidence_calibrated", True), ("id", True)),
    "confidence": (("v__confidence_calibrated", False), ("id", False)),
}
SORT_CHOICES = [
    ("-id", "newest first"),
    ("id", "oldest first"),
    ("external_id", "id A-Z"),
    ("-external_id", "id Z-A"),
    ("-confidence", "P(accept), highest first"),
    ("confidence", "P(accept), lowest first"),
]


def distinct_values(project: Project, column: str, limit: int = DISTINCT_MAX) -> list[str]:
    """The first ``limit`` distinct non-empty values of ``column`` (``task_type`` or ``source_model``) among the
    project's items, in order. A loose index scan (a recursive query that jumps from value to value on the
    ``(project, column)`` index), so it costs one index probe per value, not a pass over every item."""
    if column not in ("task_type", "source_model"):
        raise ValueError(f"no distinct values of {column!r}")
    table, col = connection.ops.quote_name(Item._meta.db_table), connection.ops.quote_name(column)
    sql = f"""
        WITH RECURSIVE walk(value, n) AS (
            SELECT (SELECT min({col}) FROM {table} WHERE project_id = %s AND {col} > ''), 1
            UNION ALL
            SELECT (SELECT min({col}) FROM {table} WHERE project_id = %s AND {col} > walk.value), n + 1
            FROM walk WHERE walk.value IS NOT NULL AND n < %s
        )
        SELECT value FROM walk WHERE value IS NOT NULL"""
    with connection.cursor() as cursor:
        cursor.execute(sql, [project.pk, project.pk, limit])
        return [row[0] for row in cursor.fetchall()]


class ItemFilterForm(forms.Form):
    """The items list's filters, sort and page, from the query string. Every field is optional; a field that
    does not validate is left out of the filter (the form's errors say which). ``run`` defaults to the first
    tier of the gating policy in force: its verdict and calibrated P(accept) are what ``verdict``,
    ``confidence_min``/``confidence_max`` and the confidence sorts read."""

    q = forms.CharField(required=False, max_length=500, label="Search")
    outcome = forms.ChoiceField(choices=[("", "any"), *OUTCOMES], required=False)
    basis = forms.ChoiceField(choices=[("", "any"), *BASES], required=False, label="Rests on")
    queued = forms.ChoiceField(choices=[("", "any"), ("yes", "in the SME queue"), ("no", "not queued")],
                               required=False, label="SME queue")  # fmt: skip
    run = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, label="Judge run")
    verdict = forms.ChoiceField(choices=[("", "any"), *VERDICTS], required=False)
    confidence_min = forms.FloatField(min_value=0, max_value=1, required=False, label="P(accept) from")
    confidence_max = forms.FloatField(min_value=0, max_value=1, required=False, label="to")
    rule = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, label="Rule hit")
    reviewer = forms.ChoiceField(required=False)
    task_type = forms.CharField(required=False, max_length=200, label="Task type")
    source_model = forms.CharField(required=False, max_length=200, label="Source model")
    import_job = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, label="Import")
    sort = forms.ChoiceField(choices=SORT_CHOICES, required=False)

    FILTERS = ("q", "outcome", "basis", "queued", "run", "verdict", "confidence_min", "confidence_max", "rule",
               "reviewer", "task_type", "source_model", "import_job")  # fmt: skip

    def __init__(self, data, *, project: Project):
        super().__init__(data)
        self.project = project
        policy = gating_policy(project)
        tiers = list(policy.tiers.all()) if policy else []
        self.policy_run_id = tiers[0].run_id if tiers else None
        runs = JudgeRun.objects.filter(project=project, status=JudgeRun.Status.FINISHED).order_by("-id")[:100]
        self.fields["run"].choices = [("", "the gating policy's first tier" if tiers else "none")] + [
            (run.pk, f"run {run.pk}: {run.judge_label}") for run in runs
        ]
        rules = LabelFunction.objects.filter(project=project).order_by("name")
        self.fields["rule"].choices = [("", "any")] + [(rule.pk, rule.name) for rule in rules]
        members = Membership.objects.filter(project=project).select_related("user").order_by("user__username")
        self.fields["reviewer"].choices = [("", "any"), (IMPORTED, "imported label")] + [
            (str(m.user_id), m.user.get_username()) for m in members
        ]
        jobs = ImportJob.objects.filter(project=project).exclude(started_at=None).order_by("-id")[:100]
        self.fields["import_job"].choices = [("", "any")] + [
            (job.pk, f"{job.pk}: {job.filename} ({job.created_at:%Y-%m-%d %H:%M})") for job in jobs
        ]

    @cached_property
    def task_types(self) -> list[str]:
        """For the task type box's suggestions: asked for only when the whole page is drawn (not the results)."""
        return distinct_values(self.project, "task_type")

    @cached_property
    def source_models(self) -> list[str]:
        return distinct_values(self.project, "source_model")

    SELECTS = ("outcome", "basis", "queued", "run", "verdict", "rule", "reviewer", "import_job", "sort")

    @cached_property
    def selects(self) -> dict[str, str]:
        """``{field: "<select>…</select>"}`` for the choice fields, escaped, the submitted value selected. Drawn
        here rather than by Django's widget templates, which cost more than the rest of the page together."""
        self.is_valid()
        html = {}
        for name in self.SELECTS:
            current = str(self.data.get(name, "") or "")
            options = format_html_join(
                "",
                "<option value=\"{}\"{}>{}</option>",
                ((value, mark_safe(" selected") if str(value) == current else "", label)
                 for value, label in self.fields[name].choices),
            )  # fmt: skip
            html[name] = format_html('<select name="{}" id="id_{}">{}</select>', name, name, options)
        return html

    def filters(self) -> dict:
        """The valid, non-empty filters: ``{name: value}`` (what a bulk action records and links keep)."""
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        return {name: data[name] for name in self.FILTERS if data.get(name) not in (None, "")}

    @property
    def run_id(self) -> int | None:
        """The judge run whose verdicts the filter and the confidence sort read."""
        return self.filters().get("run") or self.policy_run_id

    @property
    def sort_name(self) -> str:
        self.is_valid()
        return getattr(self, "cleaned_data", {}).get("sort") or "-id"


def items_filtered(project: Project, filters: dict, run_id: int | None, *, sort: str = "-id") -> QuerySet:
    """The project's items matching ``filters`` (``ItemFilterForm.filters()``), unordered, with the verdict of
    run ``run_id`` joined as ``v`` (a LEFT JOIN on the run's unique (run, item) index; None: no run, and the
    verdict filters match nothing but ``verdict=none``). Full-text search (``q``): on PostgreSQL the
    ``websearch_to_tsquery`` syntax over prompt and response (words, "quoted phrases", -not, or; the first
    100,000 characters; the 'simple' dictionary, so no stemming), or an item's exact external id; elsewhere
    ``icontains`` on prompt, response and external id. The confidence sorts keep only the items that the run gave
    a calibrated P(accept), so the count and the pages agree."""
    items = Item.objects.filter(project=project).order_by()
    items = items.annotate(v=FilteredRelation("verdicts", condition=Q(verdicts__run_id=run_id or 0)))
    # The run's verdict is a multi-valued relation: its conditions go into one filter(), so they share one join.
    on_verdict = Q(v__confidence_calibrated__isnull=False) if sort.endswith("confidence") else Q()
    q = filters.get("q", "").strip()
    if q and connection.vendor == "postgresql":
        items = items.filter(RawSQL(FULLTEXT_SQL, [q], output_field=BooleanField()) | Q(external_id=q))
    elif q:
        items = items.filter(Q(prompt__icontains=q) | Q(response__icontains=q) | Q(external_id__icontains=q))
    outcome = filters.get("outcome")
    if outcome == UNGATED:
        items = items.filter(gate_decision__isnull=True)
    elif outcome:
        items = items.filter(gate_decision__outcome=outcome)
    basis = filters.get("basis")
    if basis == "rule":
        items = items.filter(gate_decision__vetoed=True)
    elif basis == "judge":
        items = items.filter(gate_decision__basis__in=[Basis.JUDGE, Basis.TIER])
    elif basis:
        items = items.filter(gate_decision__basis=Basis.SME if basis == "sme" else Basis.NONE)
    if filters.get("queued"):
        items = items.filter(in_sme_queue()) if filters["queued"] == "yes" else items.exclude(in_sme_queue())
    verdict = filters.get("verdict")
    if verdict == "none":
        # NOT EXISTS, which PostgreSQL plans as an anti-join (a LEFT JOIN's IS NULL here it does not).
        items = items.filter(~Exists(Verdict.objects.filter(run_id=run_id or 0, item=OuterRef("pk"))))
    elif verdict == "error":
        on_verdict &= Q(v__verdict="")
    elif verdict:
        on_verdict &= Q(v__verdict=verdict)
    if filters.get("confidence_min") is not None:
        on_verdict &= Q(v__confidence_calibrated__gte=filters["confidence_min"])
    if filters.get("confidence_max") is not None:
        on_verdict &= Q(v__confidence_calibrated__lte=filters["confidence_max"])
    if on_verdict:
        items = items.filter(on_verdict)
    if filters.get("rule"):
        items = items.filter(Exists(RuleHit.objects.filter(item=OuterRef("pk"), label_function_id=filters["rule"])))
    reviewer = filters.get("reviewer")
    if reviewer == IMPORTED:
        items = items.filter(Exists(Review.objects.filter(item=OuterRef("pk"), reviewer__isnull=True)))
    elif reviewer:
        items = items.filter(Exists(Review.objects.filter(item=OuterRef("pk"), reviewer_id=int(reviewer))))
    for column in ("task_type", "source_model"):
        if filters.get(column):
            items = items.filter(**{column: filters[column]})
    if filters.get("import_job"):
        job = ImportJob.objects.filter(project=project, pk=filters["import_job"]).first()
        # Imports into a project take turns (an advisory lock), so the items created while one ran are its own.
        if job is None or job.started_at is None:
            items = items.none()
        else:
            items = items.filter(created_at__gte=job.started_at, created_at__lte=job.finished_at or timezone.now())
    return items


@dataclass
class ItemsPage:
    """One keyset page: ``rows`` (dicts, see ``items_page``), and the cursors of the pages after and before it
    (None: there is none)."""

    rows: list[dict]
    after: str | None = None
    before: str | None = None
    sort: str = "-id"
    notes: list[str] = field(default_factory=list)


def _cursor(row: dict, keys) -> str:
    return json.dumps([row[name] for name, _desc in keys])


def _beyond(keys, values: list, *, backwards: bool) -> Q:
    """The rows after ``values`` in the order ``keys`` (before them when ``backwards``): lexicographic."""
    condition = Q()
    for depth in range(len(keys) - 1, -1, -1):
        name, descending = keys[depth]
        lookup = "lt" if descending != backwards else "gt"
        step = Q(**{f"{name}__{lookup}": values[depth]})
        equal = Q(**{keys[i][0]: values[i] for i in range(depth)})
        condition = (equal & step) | condition if depth < len(keys) - 1 else equal & step
    return condition


_BIGINT = 2**63 - 1


def _cursor_value_ok(name: str, value) -> bool:
    """Whether ``value`` can be the cursor's value of sort key ``name``: an id a whole number in bigint's
    range, an external id a string without NUL (PostgreSQL text cannot hold one), a P(accept) a finite number."""
    if isinstance(value, bool):
        return False
    if name == "id":
        return isinstance(value, int) and -_BIGINT <= value <= _BIGINT
    if name == "external_id":
        return isinstance(value, str) and "\x00" not in value
    return isinstance(value, int | float) and math.isfinite(value)


def _parse_cursor(raw: str | None, keys) -> list | None:
    """The cursor ``raw`` (a JSON list, one value per sort key of ``keys``), or None when it is absent or
    malformed (a client's garbage is ignored: the first page is shown)."""
    if not raw:
        return None
    try:
        values = json.loads(raw)
    except ValueError:
        return None
    ok = isinstance(values, list) and len(values) == len(keys)
    return values if ok and all(_cursor_value_ok(k[0], v) for k, v in zip(keys, values, strict=True)) else None


def items_page(items: QuerySet, *, sort: str, after: str | None = None, before: str | None = None) -> ItemsPage:
    """A page of ``PAGE_SIZE`` rows of ``items`` (from ``items_filtered``) in ``sort`` order (a key of
    ``SORTS``), after the cursor ``after`` or before ``before`` (each the JSON list of a row's sort key that
    the page's links carry; a malformed one is ignored). Rows: ``{"id", "external_id", "prompt", "response"
    (their first 160/240 characters), "task_type", "source_model", "in_sme_queue", "outcome", "basis",
    "vetoed", "verdict", "confidence"}``. The confidence sorts list only items the run gave a calibrated
    P(accept) (``items_filtered`` with the same ``sort`` leaves out the others; ``notes`` says so)."""
    keys = SORTS.get(sort) or SORTS["-id"]
    notes = []
    if keys[0][0].startswith("v__"):
        notes.append("Sorted by the run's calibrated P(accept): items without one are not listed.")
    after_values, before_values = _parse_cursor(after, keys), _parse_cursor(before, keys)
    backwards = before_values is not None and after_values is None
    if backwards:
        items = items.filter(_beyond(keys, before_values, backwards=True))
    elif after_values is not None:
        items = items.filter(_beyond(keys, after_values, backwards=False))
    order = [f"{'-' if desc != backwards else ''}{name}" for name, desc in keys]
    rows = list(
        items.order_by(*order).values(
            "id", "external_id", "task_type", "source_model",
            in_sme_queue=in_sme_queue(),
            prompt_head=Left("prompt", 160),
            response_head=Left("response", 240),
            outcome=F("gate_decision__outcome"),
            basis=F("gate_decision__basis"),
            vetoed=F("gate_decision__vetoed"),
            verdict=F("v__verdict"),
            confidence=F("v__confidence_calibrated"),
        )[: PAGE_SIZE + 1]
    )  # fmt: skip
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    if backwards:
        rows.reverse()
    for row in rows:
        row["v__confidence_calibrated"] = row["confidence"]
    page = ItemsPage(rows=rows, sort=sort if sort in SORTS else "-id", notes=notes)
    if rows:
        if (more and not backwards) or (backwards and before_values is not None):
            page.after = _cursor(rows[-1], keys)
        if (backwards and more) or (not backwards and after_values is not None):
            page.before = _cursor(rows[0], keys)
    _add_row_details(rows)
    return page


def _add_row_details(rows: list[dict]) -> None:
    """Each row's rule hits (names) and reviews (count), in two queries for the page."""
    ids = [row["id"] for row in rows]
    hits: dict[int, list[str]] = {}
    for item_id, name in RuleHit.objects.filter(item_id__in=ids).values_list("item_id", "label_function__name"):
        hits.setdefault(item_id, []).append(name)
    reviews: dict[int, int] = {}
    for item_id in Review.objects.filter(item_id__in=ids).values_list("item_id", flat=True):
        reviews[item_id] = reviews.get(item_id, 0) + 1
    for row in rows:
        row["rules"] = sorted(hits.get(row["id"], []))
        row["reviews"] = reviews.get(row["id"], 0)


def count_capped(items: QuerySet, cap: int | None = None, *, sort: str = "-id") -> tuple[int, bool]:
    """``(n, capped)``: how many of ``items`` there are, counting at most ``cap`` + 1 (default ``COUNT_CAP``;
    ``capped`` True: ``cap`` or more), so a count never walks a million rows. It counts in the page's order
    (``sort``), so PostgreSQL takes the path that found the page's rows, which meets the first matches soonest."""
    cap = COUNT_CAP if cap is None else cap
    keys = SORTS.get(sort) or SORTS["-id"]
    ordered = items.order_by(*[f"{'-' if desc else ''}{name}" for name, desc in keys])
    n = ordered.values("pk")[: cap + 1].count()
    return (cap, True) if n > cap else (n, False)


def count_estimate(items: QuerySet) -> int | None:
    """PostgreSQL's planner's estimate of how many ``items`` there are (``EXPLAIN``'s top row count: from the
    tables' statistics, not a count; it can be off by a factor for filters that correlate), or None elsewhere.
    Costs a plan, not a scan."""
    if connection.vendor != "postgresql":
        return None
    sql, params = items.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0]["Plan"]["Plan Rows"])


class BulkError(ValueError):
    """A bulk action that cannot be done as asked; the message says why."""


def items_bulk_act(
    *,
    project: Project,
    user,
    action: str,
    items: QuerySet,
    filters: dict,
    item_ids: list[int] | None = None,
    size: int | None = None,
    seed: int = 0,
) -> ItemBulkAction:
    """Do a lead's bulk action on ``items`` (``items_filtered``'s, for the same ``filters``), or on the
    ``item_ids`` among them when given (picked by hand), and log it as an ``ItemBulkAction`` (and to the log).

    ``queue``: put them in the SME queue (``annotations.queue.queue_add``); no sampling design chose them, so
    their SME labels are ground truth but the estimate does not weight them. ``audit``: a seeded uniform sample
    of ``size`` of the accepted items among them not yet queued: with no filter and no hand-picked items it is
    the audit design of ``annotations.sampling.sample_draw`` (a recorded draw, used by the estimate); otherwise
    a uniform sample of that slice (``random.Random(seed).sample`` over the ids in order), queued and logged
    but not a recorded design. Raises BulkError: an unknown action, nothing selected, more than ``BULK_MAX``
    items, an audit size outside 1 to ``BULK_MAX``.
    """
    if action not in ItemBulkAction.Action.values:
        raise BulkError(f"unknown action {action[:40]!r}: queue or audit")
    if item_ids is not None:
        items = items.filter(pk__in=item_ids)
    ids = list(items.order_by("pk").values_list("pk", flat=True)[: BULK_MAX + 1])
    if not ids:
        raise BulkError("no items selected")
    if len(ids) > BULK_MAX:
        raise BulkError(f"more than {BULK_MAX:,} items: narrow the filter first")
    record = ItemBulkAction(
        project=project, action=action, filters=_jsonable(filters), item_ids=item_ids or [], matched=len(ids),
        created_by=user if user and user.is_authenticated else None,
    )  # fmt: skip
    with transaction.atomic():
        if action == ItemBulkAction.Action.QUEUE:
            record.queued = queue_add(project=project, item_ids=ids)
        else:
            if not size or size < 1 or size > BULK_MAX:
                raise BulkError(f"an audit sample needs a size from 1 to {BULK_MAX:,}")
            record.size, record.seed = size, seed
            if not filters and item_ids is None:
                draw = sample_draw(project=project, size=size, design=SampleDraw.Design.AUDIT, seed=seed, user=user)
                record.draw, record.population, record.queued = draw, draw.population, draw.drawn
            else:
                accepted = list(
                    items.filter(pk__in=ids, gate_decision__outcome=Outcome.ACCEPT)
                    .exclude(in_sme_queue())
                    .order_by("pk")
                    .values_list("pk", flat=True)
                )
                record.population = len(accepted)
                chosen = random.Random(seed).sample(accepted, min(size, len(accepted)))
                record.queued = queue_add(project=project, item_ids=chosen)
        record.save()
    logger.info(
        "items bulk %s in project %s by %s: %d selected, %d queued (filters %s)",
        action, project.slug, record.created_by, len(ids), record.queued, record.filters,
    )  # fmt: skip
    return record


def _jsonable(filters: dict) -> dict:
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in filters.items()}


def item_story(item: Item) -> dict:
    """Everything about one item, for its page: ``{"decision": GateDecision | None, "why": [sentences],
    "truth": "accept" | "reject" | None, "reviews", "changes", "adjudication", "verdicts" (each with
    ``tier``: its PolicyTier in the policy in force, or None; ``certainty``: gate.verdict_certainty), "hits"
    (each with ``current_version``), "draws" (SampleMemberships), "training_sets" ([{"id", "name", "format",
    "status", "splits"}]), "policy"}``."""
    project = item.project
    decision = GateDecision.objects.filter(item=item).select_related("judge_run").first()
    reviews = list(item.reviews.select_related("reviewer").order_by("created_at", "id"))
    changes = list(ReviewChange.objects.filter(item=item).select_related("reviewer", "changed_by"))
    adjudication = Adjudication.objects.filter(item=item).select_related("decided_by").first()
    truth = ground_truth([item.pk]).get(item.pk)
    policy = gating_policy(project)
    tiers = {tier.run_id: tier for tier in policy.tiers.all()} if policy else {}
    verdicts = list(item.verdicts.select_related("run").order_by("-run_id"))
    for verdict in verdicts:
        verdict.tier = tiers.get(verdict.run_id)
        verdict.certainty = (
            gate.verdict_certainty(verdict.verdict, verdict.confidence_calibrated) if verdict.verdict else None
        )
    hits = list(item.rule_hits.select_related("label_function").order_by("label_function__name"))
    return {
        "decision": decision,
        "why": gate_explanation(decision, truth=truth, reviews=reviews, adjudication=adjudication, hits=hits,
                                verdicts=verdicts),
        "truth": truth,
        "reviews": reviews,
        "changes": changes,
        "adjudication": adjudication,
        "verdicts": verdicts,
        "hits": hits,
        "draws": list(item.sample_memberships.select_related("draw", "draw__created_by").order_by("-draw_id")),
        "training_sets": training_sets_of(item),
        "policy": policy,
    }  # fmt: skip


_training_sets_sources: list[Callable[[Item], list[dict]]] = []


def training_sets_source_register(source: Callable[[Item], list[dict]]) -> None:
    """Register ``source(item)``, the training sets with a row of the item: ``[{"id", "name", "format",
    "status", "url", "splits": ["train" | "validation", ...]}]``, newest first. ``distillation`` registers it
    (``distillation.selectors.item_training_sets``): judging never imports distillation."""
    _training_sets_sources[:] = [source]


@dataclass(frozen=True)
class BulkActionElsewhere:
    """A bulk action a later app offers on the items list (``distillation``: send the items to the teacher):
    a button whose form (the ticked items, or ``scope=filtered`` with the list's filters) is posted to the view
    named ``url_name`` (one argument, the project's slug). judging never imports the app that offers it."""

    label: str
    url_name: str
    note: str = ""


_bulk_actions_elsewhere: dict[str, BulkActionElsewhere] = {}


def bulk_action_register(action: BulkActionElsewhere) -> None:
    """Offer ``action`` on the items list (registered again under the same ``url_name``: replaced)."""
    _bulk_actions_elsewhere[action.url_name] = action


def bulk_actions_elsewhere() -> list[BulkActionElsewhere]:
    """The bulk actions other apps registered, in registration order."""
    return list(_bulk_actions_elsewhere.values())


def training_sets_of(item: Item) -> list[dict]:
    """The training sets ``item`` is in, from the registered source (none registered: none)."""
    return _training_sets_sources[0](item) if _training_sets_sources else []


def gate_explanation(decision, *, truth, reviews, adjudication, hits, verdicts) -> list[str]:
    """Why the gate decided what it did, in sentences a lead reads on the item page: the outcome, what it
    rests on (SME ground truth and from whom, a policy tier's verdict with its certainty against the
    threshold, nothing), and every rule that vetoed it with its reason. From the stored ``GateDecision`` (see
    ``judging.gate.decide``); an item never gated says so."""
    if decision is None:
        return ["Not gated yet: the gate decides an item after an import, a rule change or a re-gating."]
    lines = [f"Outcome: {decision.outcome}."]
    if decision.basis == Basis.SME:
        if adjudication is not None:
            who = f"a lead's adjudication ({adjudication.decided_by or 'unknown'})"
        else:
            names = [r.reviewer.get_username() if r.reviewer else "an imported label" for r in reviews]
            who = "the SME review" + ("s" if len(names) > 1 else "") + " of " + ", ".join(names) if names else "SMEs"
        lines.append(f"It rests on SME ground truth: {decision.basis_decision}, from {who}.")
    elif decision.basis in (Basis.JUDGE, Basis.TIER):
        run = decision.judge_run
        by = f"run {run.pk} ({run.judge_label})" if run else "a judge run since deleted"
        shown = next((v for v in verdicts if run and v.run_id == run.pk), None)
        sure = ""
        if shown is not None and shown.tier is not None and shown.tier.threshold is not None:
            certainty = "unknown" if shown.certainty is None else f"{shown.certainty:.3f}"
            sure = f", with calibrated certainty {certainty} ≥ the tier's threshold {shown.tier.threshold:g}"
        tier = f"tier {decision.tier} of the gating policy, " if decision.tier else "the gating policy's "
        lines.append(f"It rests on {tier}{by}, which said {decision.basis_decision}{sure}.")
    elif decision.outcome == Outcome.PENDING and decision.reasons:
        lines.append("Pending: " + "; ".join(decision.reasons) + ".")
    elif decision.outcome == Outcome.PENDING:
        lines.append(
            "Pending: no SME ground truth, and no tier of the gating policy was sure enough (or there is no "
            "policy); it is never exported until an SME decides it."
        )
    if decision.vetoed:
        names = ", ".join(f"{hit.label_function.name} (v{hit.version})" for hit in hits) or "a rule"
        lines.append(f"Vetoed by {names}: " + "; ".join(decision.reasons) + ". A rule's veto rejects whatever "
                     "the SMEs or the judge said.")  # fmt: skip
    if truth is not None and decision.basis != Basis.SME:
        lines.append(f"SME ground truth is now {truth}, which the gate has not seen yet: it counts at the next "
                     "re-gating.")  # fmt: skip
    return lines
