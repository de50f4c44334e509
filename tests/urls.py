from django.contrib import admin
from django.urls import include, path

from tests.testapp.views import urlpatterns as http_tier_urls

urlpatterns = [path("admin/", admin.site.urls), path("http/", include(http_tier_urls))]
