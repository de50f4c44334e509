from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_tiercache import key_factory, register
        from shop.models import Review

        # Review has no SurrogateKeyMixin: register() tracks it declaratively. Saving or deleting a
        # review invalidates its own keys plus the page of the product it belongs to.
        register(Review, purge_keys=[key_factory("shop.product:{obj.product_id}")])
