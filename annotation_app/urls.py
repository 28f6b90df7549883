from django.contrib.auth import views as auth_views
from django.urls import path

from annotation_app import views
from annotation_app.forms import SignInForm

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(authentication_form=SignInForm), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("annotate/", views.annotate, name="annotate"),
    path("tasks/<int:assignment_id>/", views.task, name="task"),
    path("tasks/<int:assignment_id>/submit/", views.submit, name="submit"),
    path("tasks/<int:assignment_id>/release/", views.release, name="release"),
    path("tasks/<int:assignment_id>/continue/", views.continue_dialogue, name="continue"),
    path("batches/<int:batch_id>/write/", views.write_prompt, name="write-prompt"),
    path("batches/<int:batch_id>/progress/", views.progress, name="batch-progress"),
    path("training/", views.training_page, name="training"),
    path("training/runs/<int:run_id>/", views.training_run, name="training-run"),
    path(
        "training/runs/<int:run_id>/promote/",
        views.promote_training_output,
        name="training-promote",
    ),
]
