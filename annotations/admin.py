from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.forms.models import BaseInlineFormSet

from annotations.models import (
    Adjudication,
    ImportJob,
    Item,
    Membership,
    Project,
    ProjectChange,
    Review,
    ReviewChange,
    SampleDraw,
)
from annotations.project_settings import project_change_record
from annotations.queue import in_sme_queue, slots_sync
from annotations.services import (
    ReviewError,
    adjudicate,
    adjudication_delete,
    review_reason_clean,
    review_staff_delete,
    review_staff_edit,
)


class ViewOnlyAdmin(admin.ModelAdmin):
    """Rows that are a record (derived by a service, or history): shown in the admin, never added, changed
    or deleted there, whatever the user's permissions. The admin's own log ("Changed outcome.") is no
    audit trail; the history rows are, so nothing may bypass the services that write them."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class OwnsRecordsAdmin(admin.ModelAdmin):
    """An admin whose rows own records (ViewOnlyAdmin rows, or rows another admin marks
    ``deleted_only_with_parent``): deleting the row deletes them with it, although none may be deleted alone.

    Django refuses a deletion that cascades to a model whose admin refuses deletion; these are records of
    the row being deleted (a project's history goes with the project), so only real permission gaps count.
    """

    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        records = {
            model._meta.verbose_name
            for model, model_admin in self.admin_site._registry.items()
            if isinstance(model_admin, ViewOnlyAdmin) or getattr(model_admin, "deleted_only_with_parent", False)
        }
        return deleted, counts, perms_needed - records, protected


class MembershipFormSet(BaseInlineFormSet):
    """The project's members as the admin edits them: a change that would leave a project that has a lead
    with none (its only lead deleted, demoted or swapped for another account) is refused with a form error,
    as the settings page refuses it (``project_settings.member_remove``, ``member_add``)."""

    def clean(self):
        super().clean()
        if any(self.errors) or self.instance.pk is None:
            return
        leads = list(
            self.instance.memberships.filter(role=Membership.Role.LEAD).values_list("user__username", flat=True)
        )
        if not leads:  # a project still without a lead (just created): staff add one when they will
            return
        kept = 0
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or (self.can_delete and self._should_delete_form(form)):
                continue
            kept += data.get("role") == Membership.Role.LEAD and data.get("user") is not None
        if not kept:
            raise ValidationError(
                f"{', '.join(leads)} {'is the only lead' if len(leads) == 1 else 'are the only leads'} of the "
                "project: add another lead first (or in this same save)."
            )


class MembershipInline(admin.TabularInline):
    """Who may see and review the project (SME), and who also adjudicates (lead)."""

    model = Membership
    formset = MembershipFormSet
    extra = 1
    autocomplete_fields = ("user",)


@admin.register(Project)
class ProjectAdmin(OwnsRecordsAdmin):
    # The project's judges are JudgeEndpoint rows, in their own admin (judging depends on annotations, not back).
    fields = ("slug", "name", "guidelines", "reviews_per_item", "lease_minutes", "reject_reasons")
    list_display = ("name", "slug", "reviews_per_item", "lease_minutes", "created_at")
    prepopulated_fields = {"slug": ("name",)}
    search_fields = ("name", "slug")
    inlines = [MembershipInline]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if "reviews_per_item" in form.changed_data:
            slots_sync(project=obj)  # open (or trim) review slots to match
        # Logged as the settings page logs them (its "Changes" list), so the admin is no way around the log.
        edited = {
            name: {"before": form.initial.get(name), "after": getattr(obj, name)}
            for name in ("reject_reasons", "guidelines")
            if change and name in form.changed_data
        }
        if edited:
            project_change_record(project=obj, user=request.user, action=ProjectChange.Action.SETTINGS_EDIT, **edited)

    def save_formset(self, request, form, formset, change):
        """Members added, changed and removed here are logged like the settings page's (``ProjectChange``)."""
        if formset.model is not Membership:
            return super().save_formset(request, form, formset, change)
        project, user, action = form.instance, request.user, ProjectChange.Action
        before = {m.pk: (m.user.get_username(), m.role) for m in project.memberships.select_related("user")}
        gone = [before[f.instance.pk] for f in formset.deleted_forms if f.instance.pk in before]
        formset.save()
        for name, role in gone:
            project_change_record(project=project, user=user, action=action.MEMBER_REMOVE, member=name, role=role)
        for new in formset.new_objects:
            project_change_record(
                project=project, user=user, action=action.MEMBER_ADD, member=new.user.get_username(), role=new.role
            )
        for changed, _fields in formset.changed_objects:
            old_name, old_role = before.get(changed.pk, ("", ""))
            name = changed.user.get_username()
            if old_name != name:  # the row now names another account: one left, another joined
                project_change_record(
                    project=project, user=user, action=action.MEMBER_REMOVE, member=old_name, role=old_role
                )
                project_change_record(
                    project=project, user=user, action=action.MEMBER_ADD, member=name, role=changed.role
                )
            elif old_role != changed.role:
                project_change_record(
                    project=project, user=user, action=action.MEMBER_ROLE, member=name, before=old_role,
                    after=changed.role,
                )  # fmt: skip
        return None


class ReviewChangeInline(admin.TabularInline):
    """The item's history of SME decisions and adjudications, newest first."""

    model = ReviewChange
    fields = ("changed_at", "action", "reviewer", "changed_by", "before", "after")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class QueuedFilter(admin.SimpleListFilter):
    """By "in the SME queue": whether the item has slots (``annotations.queue.in_sme_queue``)."""

    title = "in SME queue"
    parameter_name = "in_sme_queue"

    def lookups(self, request, model_admin):
        return [("1", "Yes"), ("0", "No")]

    def queryset(self, request, queryset):
        if self.value() == "1":
            return queryset.filter(in_sme_queue())
        if self.value() == "0":
            return queryset.exclude(in_sme_queue())
        return queryset


@admin.register(Item)
class ItemAdmin(OwnsRecordsAdmin):
    """Items are imported, never added or rewritten here: their text is what the SMEs and the judge saw."""

    list_display = ("external_id", "project", "source_model", "task_type", "in_sme_queue")
    list_filter = ("project", QueuedFilter, "task_type")
    search_fields = ("external_id", "prompt", "response")
    list_select_related = ("project",)
    show_full_result_count = False
    inlines = [ReviewChangeInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(queued=in_sme_queue())

    @admin.display(boolean=True, description="in SME queue", ordering="queued")
    def in_sme_queue(self, item) -> bool:
        return item.queued

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class ReviewAdminForm(forms.ModelForm):
    """The fields an SME edits on "My reviews", checked by the same rules (a reject needs one of the reasons)."""

    class Meta:
        model = Review
        fields = ("decision", "reason", "comment", "corrected_response")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            reasons = ", ".join(self.instance.item.project.reject_reasons)
            self.fields["reason"].help_text = f"For a reject, one of: {reasons}."

    def clean(self):
        cleaned = super().clean()
        if "decision" in cleaned:
            try:
                cleaned["reason"] = review_reason_clean(
                    project=self.instance.item.project, decision=cleaned["decision"], reason=cleaned.get("reason", "")
                )
            except ReviewError as exc:
                raise forms.ValidationError(str(exc)) from None
        return cleaned


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    """Staff edit or delete a decision through the review services: kept in history (with who did it) and
    re-gated. Reviews are made on the review screen or imported, never added here."""

    form = ReviewAdminForm
    list_display = ("item", "decision", "reason", "reviewer", "origin", "created_at")
    list_filter = ("decision", "origin", "item__project")
    list_select_related = ("item__project", "reviewer")
    fields = ("item", "reviewer", "origin", "decision", "reason", "comment", "corrected_response", "seconds_spent")
    readonly_fields = ("item", "reviewer", "origin", "seconds_spent")

    def has_add_permission(self, request) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        try:
            review_staff_edit(
                review=obj,
                staff=request.user,
                decision=obj.decision,
                reason=obj.reason,
                comment=obj.comment,
                corrected_response=obj.corrected_response,
            )
        except ReviewError as exc:
            self.message_user(request, str(exc), messages.ERROR)

    def delete_model(self, request, obj):
        review_staff_delete(review=obj, staff=request.user)

    def delete_queryset(self, request, queryset):
        for review in queryset.select_related("item"):
            review_staff_delete(review=review, staff=request.user)


@admin.register(ReviewChange)
class ReviewChangeAdmin(ViewOnlyAdmin):
    """The history of ground truth (append-only): the record of who changed which decision."""

    list_display = ("item", "action", "reviewer", "changed_by", "changed_at")
    list_filter = ("action", "item__project")
    list_select_related = ("item", "reviewer", "changed_by")


@admin.register(ProjectChange)
class ProjectChangeAdmin(ViewOnlyAdmin):
    """The log of the project settings page (append-only): members, accounts, reasons, runs, re-gatings."""

    list_display = ("project", "action", "changed_by", "changed_at")
    list_filter = ("action", "project")
    list_select_related = ("project", "changed_by")


@admin.register(Adjudication)
class AdjudicationAdmin(admin.ModelAdmin):
    """A lead's decision, changed or withdrawn here through the adjudication services (kept in history,
    re-gated); leads adjudicate on the project's adjudication page, so nothing is added here."""

    list_display = ("item", "decision", "reason", "decided_by", "decided_at")
    fields = ("item", "decision", "reason", "decided_by", "decided_at")
    readonly_fields = ("item", "decided_by", "decided_at")

    def has_add_permission(self, request) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        try:
            adjudicate(item=obj.item, lead=request.user, decision=obj.decision, reason=obj.reason)
        except ReviewError as exc:
            self.message_user(request, str(exc), messages.ERROR)

    def delete_model(self, request, obj):
        adjudication_delete(adjudication=obj, user=request.user)

    def delete_queryset(self, request, queryset):
        for adjudication in queryset.select_related("item__project"):
            adjudication_delete(adjudication=adjudication, user=request.user)


@admin.register(ImportJob)
class ImportJobAdmin(ViewOnlyAdmin):
    """Imports uploaded on the import page: their outcome lives on the row, which also names who uploaded
    the file (its prior labels became ground truth)."""

    list_display = ("id", "project", "filename", "status", "rows_read", "created_by", "created_at", "finished_at")
    list_filter = ("status",)
    exclude = ("report",)


@admin.register(SampleDraw)
class SampleDrawAdmin(ViewOnlyAdmin):
    """SME sample draws (``annotations.sampling``): a record of how SME items were chosen, which the estimate's
    inverse-inclusion weights rest on, so never changed here. Each item's probability is in the REST API's
    data and the database (``SampleMembership``)."""

    list_display = ("id", "project", "design", "strata", "allocation", "seed", "size", "drawn", "population")
    list_display += ("created_by", "created_at")
    list_filter = ("design",)
