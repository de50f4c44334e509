from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_tiercache import key_factory, register
        from tests.testapp.models import Review

        register(Review, purge_keys=[key_factory("testapp.product:{obj.product_id}"), "reviews"])
