from django.conf import settings
from django.contrib import admin
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from annotations.admin import ViewOnlyAdmin
from distillation.models import TeacherAnswer, TeacherRun, TeacherSettings
from judging.admin import WriteOnlyKeyForm, connection_checked


class TeacherSettingsForm(WriteOnlyKeyForm):
    """A project's teacher, with its API key write-only (blank: none, or ``LARRY_TEACHER_API_KEY`` with a blank URL)."""

    class Meta:
        model = TeacherSettings
        fields = (  # every field but api_key
            "project",
            "base_url",
            "model",
            "api_key_new",
            "api_key_clear",
            "system_prompt",
            "temperature",
            "max_tokens",
            "ask_reasoning",
            "max_in_flight",
            "requests_per_minute",
            "tokens_per_minute",
            "price_in",
            "price_out",
        )

    def clean(self):
        """The teacher must answer (``judging.admin.connection_checked``; blank fields: ``LARRY_TEACHER_*``)."""
        return connection_checked(
            self,
            super().clean(),
            who="teacher",
            default_url=settings.LARRY_TEACHER_BASE_URL,
            default_model=settings.LARRY_TEACHER_MODEL,
        )


@admin.register(TeacherSettings)
class TeacherSettingsAdmin(admin.ModelAdmin):
    """A project's teacher (Sensei Larry); blank fields take ``LARRY_TEACHER_*`` from the environment."""

    form = TeacherSettingsForm
    list_display = ("project", "model", "base_url", "temperature", "max_tokens", "ask_reasoning")

    @method_decorator(sensitive_post_parameters("api_key_new"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)


@admin.register(TeacherRun)
class TeacherRunAdmin(ViewOnlyAdmin):
    """Teacher runs are started, cancelled and resumed from the project's pages, the API or ``run_teacher``."""

    list_display = ("id", "project", "model", "selection", "status", "items_total", "answers_written")
    list_filter = ("project", "status")


@admin.register(TeacherAnswer)
class TeacherAnswerAdmin(ViewOnlyAdmin):
    list_display = ("item", "run", "answer", "error_class", "tokens_in", "tokens_out", "latency_ms")
    list_filter = ("error_class", "run")
    raw_id_fields = ("item", "run", "answer")
    show_full_result_count = False
