from django.contrib import admin

from annotations.models import Adjudication, ImportJob, Item, Membership, Project, Review, ReviewChange
from annotations.queue import slots_sync


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


class MembershipInline(admin.TabularInline):
    """Who may see and review the project (SME), and who also adjudicates (lead)."""

    model = Membership
    extra = 1
    autocomplete_fields = ("user",)


@admin.register(Project)
class ProjectAdmin(OwnsRecordsAdmin):
    list_display = ("name", "slug", "reviews_per_item", "lease_minutes", "judge_model", "created_at")
    prepopulated_fields = {"slug": ("name",)}
    search_fields = ("name", "slug")
    inlines = [MembershipInline]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if "reviews_per_item" in form.changed_data:
            slots_sync(project=obj)  # open (or trim) review slots to match


@admin.register(Item)
class ItemAdmin(OwnsRecordsAdmin):
    list_display = ("external_id", "project", "source_model", "task_type", "in_sme_queue")
    list_filter = ("project", "in_sme_queue", "task_type")
    search_fields = ("external_id", "prompt", "response")
    list_select_related = ("project",)
    show_full_result_count = False


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ("item", "decision", "reason", "reviewer", "origin", "created_at")
    list_filter = ("decision", "origin", "item__project")
    raw_id_fields = ("item",)
    list_select_related = ("item__project", "reviewer")


@admin.register(ReviewChange)
class ReviewChangeAdmin(admin.ModelAdmin):
    list_display = ("item", "reviewer", "action", "changed_at")
    list_filter = ("action", "item__project")
    raw_id_fields = ("item",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Adjudication)
class AdjudicationAdmin(admin.ModelAdmin):
    list_display = ("item", "decision", "reason", "decided_by", "decided_at")
    raw_id_fields = ("item",)


@admin.register(ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    """Imports uploaded on the import page, read-only: their outcome lives on the row."""

    list_display = ("id", "project", "filename", "status", "rows_read", "created_by", "created_at", "finished_at")
    list_filter = ("status",)
    exclude = ("report",)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
