from django.urls import path

from judging import api, views

app_name = "judging"

urlpatterns = [
    path("projects/<slug:slug>/", views.project_detail, name="project_detail"),
    path("projects/<slug:slug>/judge/", views.judge_run_start, name="judge_run_start"),
    path("projects/<slug:slug>/regate/", views.regate, name="regate"),
    path("projects/<slug:slug>/rules/", views.rules, name="rules"),
    path("api/projects/<slug:slug>/export/chat.jsonl", api.ExportChatJsonlApi.as_view(), name="api_export_chat"),
]
