from django.urls import path

from annotations import api, views

app_name = "annotations"

urlpatterns = [
    path("", views.project_list, name="project_list"),
    path("projects/<slug:slug>/review/", views.review, name="review"),
    path("projects/<slug:slug>/review/<int:item_id>/", views.review_decide, name="review_decide"),
    path("api/projects/<slug:slug>/import/", api.ImportItemsApi.as_view(), name="api_import"),
]
