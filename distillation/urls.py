from django.urls import path

from distillation import api, views

app_name = "distillation"

urlpatterns = [
    path("projects/<slug:slug>/training-sets/", views.training_sets_page, name="training_sets"),
    path(
        "projects/<slug:slug>/training-sets/<int:training_set_id>/",
        views.training_set_detail,
        name="training_set_detail",
    ),
    path("projects/<slug:slug>/teacher-runs/", views.teacher_runs_part, name="teacher_runs"),
    path("projects/<slug:slug>/teacher-runs/check/", views.teacher_check_view, name="teacher_check"),
    path("projects/<slug:slug>/teacher-runs/from-items/", views.teacher_run_from_items, name="teacher_run_from_items"),
    path(
        "projects/<slug:slug>/teacher-runs/<int:run_id>/cancel/",
        views.teacher_run_cancel_view,
        name="teacher_run_cancel",
    ),
    path("api/projects/<slug:slug>/export/chat.jsonl", api.ExportChatJsonlApi.as_view(), name="api_export_chat"),
]
