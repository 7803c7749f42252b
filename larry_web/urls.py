from csp.decorators import csp_update
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from annotations import api as annotations_api
from distillation import api as distillation_api
from judging import api as judging_api
from larry_web.login import ObtainAuthTokenOrLockOut

api = SimpleRouter()
api.register("projects", annotations_api.ProjectViewSet, basename="project")
scoped = r"projects/(?P<project_slug>[-a-zA-Z0-9_]+)"
api.register(f"{scoped}/items", annotations_api.ItemViewSet, basename="item")
api.register(f"{scoped}/reviews", annotations_api.ReviewViewSet, basename="review")
api.register(f"{scoped}/imports", annotations_api.ImportJobViewSet, basename="import-job")
api.register(f"{scoped}/runs", judging_api.JudgeRunViewSet, basename="judge-run")
api.register(rf"{scoped}/runs/(?P<run_id>[0-9]+)/verdicts", judging_api.VerdictViewSet, basename="verdict")
api.register(
    rf"{scoped}/samples/(?P<draw_id>[0-9]+)/members", annotations_api.SampleMemberViewSet, basename="sample-member"
)
api.register(f"{scoped}/label-functions", judging_api.LabelFunctionViewSet, basename="label-function")
api.register(f"{scoped}/training-sets", distillation_api.TrainingSetViewSet, basename="training-set")
api.register(f"{scoped}/teacher-runs", distillation_api.TeacherRunViewSet, basename="teacher-run")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # A new account's set-password link, made by a lead on the project settings page (no e-mail is sent).
    path(
        "set-password/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("set-password/done/", auth_views.PasswordResetCompleteView.as_view(), name="password_reset_complete"),
    path("api/token/", ObtainAuthTokenOrLockOut.as_view(), name="api_token_obtain"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api_schema"),
    # The split view serves Swagger UI's start-up script as a file (?script), so the page needs no inline script.
    path(
        "api/docs/",
        csp_update({"img-src": ["data:"]})(SpectacularSwaggerSplitView.as_view(url_name="api_schema")),
        name="api_docs",
    ),
    path("api/", include(api.urls)),
    path("", include("annotations.urls")),
    path("", include("judging.urls")),
    path("", include("distillation.urls")),
]
