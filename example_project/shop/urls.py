from django.urls import path

from shop import views

urlpatterns = [
    path("", views.home, name="home"),
    path("categories/<slug:slug>/", views.category, name="category"),
    path("products/<int:pk>/", views.product, name="product"),
    path("account/", views.account, name="account"),
]
