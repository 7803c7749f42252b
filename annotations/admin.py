from django.contrib import admin

from annotations.models import Item, Project, Review


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "judge_model", "created_at")
    prepopulated_fields = {"slug": ("name",)}
    filter_horizontal = ("members",)
    search_fields = ("name", "slug")


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
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
