from django.urls import path

from judging import api, item_views, rule_views, settings_views, views

app_name = "judging"

urlpatterns = [
    path("projects/<slug:slug>/", views.project_detail, name="project_detail"),
    path("projects/<slug:slug>/judge/", views.judge_run_start, name="judge_run_start"),
    path("projects/<slug:slug>/regate/", views.regate, name="regate"),
    path("projects/<slug:slug>/settings/", settings_views.project_settings, name="project_settings"),
    path("projects/<slug:slug>/rules/", views.rules, name="rules"),
    path("projects/<slug:slug>/rules/new/", rule_views.rule_new, name="rule_new"),
    path("projects/<slug:slug>/rules/dry-run/", rule_views.rule_dry_run, name="rule_dry_run"),
    path("projects/<slug:slug>/rules/<int:rule_id>/", rule_views.rule_edit, name="rule_edit"),
    path("projects/<slug:slug>/rules/<int:rule_id>/active/", rule_views.rule_active, name="rule_active"),
    path("projects/<slug:slug>/rules/<int:rule_id>/delete/", rule_views.rule_delete, name="rule_delete"),
    path("projects/<slug:slug>/items/", item_views.items_list, name="items"),
    path("projects/<slug:slug>/items/bulk/", item_views.items_bulk, name="items_bulk"),
    path("projects/<slug:slug>/items/<int:item_id>/", item_views.item_detail, name="item_detail"),
    path("projects/<slug:slug>/gating-policy/", views.gating_policy_page, name="gating_policy"),
    path("projects/<slug:slug>/runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("projects/<slug:slug>/runs/compare/", views.runs_compare_page, name="runs_compare"),
    path(
        "projects/<slug:slug>/runs/<int:run_id>/recalibrate/",
        views.run_recalibrate,
        name="run_recalibrate",
    ),
    path(
        "projects/<slug:slug>/runs/<int:run_id>/<str:action>/",
        views.run_control,
        name="run_control",
    ),
    path("api/projects/<slug:slug>/estimate/", api.EstimateApi.as_view(), name="api_estimate"),
    path("projects/<slug:slug>/certify/", views.certify, name="certify"),
    path("api/projects/<slug:slug>/certificate/", api.CertificateApi.as_view(), name="api_certificate"),
    path("api/projects/<slug:slug>/gating-policy/", api.GatingPolicyApi.as_view(), name="api_gating_policy"),
]
