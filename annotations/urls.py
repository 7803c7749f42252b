from django.urls import path

from annotations import api, views

app_name = "annotations"

urlpatterns = [
    path("", views.project_list, name="project_list"),
    path("account/api-token/", views.api_token, name="api_token"),
    path("projects/<slug:slug>/review/", views.review, name="review"),
    path("projects/<slug:slug>/review/<int:item_id>/", views.review_decide, name="review_decide"),
    path("projects/<slug:slug>/review/<int:item_id>/skip/", views.review_skip_item, name="review_skip"),
    path("projects/<slug:slug>/review/undo/", views.review_undo_last, name="review_undo"),
    path("projects/<slug:slug>/my-reviews/", views.my_reviews, name="my_reviews"),
    path("projects/<slug:slug>/my-reviews/<int:review_id>/", views.review_change, name="review_change"),
    path("projects/<slug:slug>/agreement/", views.agreement, name="agreement"),
    path("projects/<slug:slug>/adjudication/", views.adjudication, name="adjudication"),
    path("projects/<slug:slug>/import/", views.import_upload, name="import"),
    path("projects/<slug:slug>/import/<int:job_id>/", views.import_job, name="import_job"),
    path("projects/<slug:slug>/import/<int:job_id>/errors.csv", views.import_job_errors, name="import_job_errors"),
    path("projects/<slug:slug>/samples/", views.sample_draw_form, name="sample_draw"),
    path("api/projects/<slug:slug>/import/", api.ImportItemsApi.as_view(), name="api_import"),
    path("api/projects/<slug:slug>/samples/", api.SampleDrawApi.as_view(), name="api_samples"),
    path("api/projects/<slug:slug>/samples/<int:draw_id>/", api.SampleDrawDetailApi.as_view(), name="api_sample"),
]
