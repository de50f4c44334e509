"""System checks of the edge tier: purgers (E004/E005, I001), their secrets (E008/W005) and the
dispatcher (E007).
Registered on import, from ``AppConfig.ready()``."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Info, Tags, register
from django.core.checks import Warning as CheckWarning
from django.utils.module_loading import import_string

from django_tiercache.conf import SETTING_NAME, tiercache_settings
from django_tiercache.edge.dispatch import celery_configured, django_tasks_configured
from django_tiercache.edge.purgers import PurgerConfigError, build_purger
from django_tiercache.edge.purgers.base import PurgerSecretError
from django_tiercache.edge.purgers.http_api import secret_problem
from django_tiercache.redact import SECRET_OPTIONS


@register(Tags.compatibility)
def check_purgers(**kwargs: Any) -> list[CheckMessage]:
    """E004/E005: purger backends that cannot be imported or lack options; I001: no worker."""
    purgers = tiercache_settings.PURGERS
    if not isinstance(purgers, dict):
        return []  # reported by E002
    messages: list[CheckMessage] = []
    for name, config in purgers.items():
        try:
            build_purger(name, config)
        except PurgerSecretError:
            continue  # check_purger_secrets says what is wrong
        except PurgerConfigError as exc:
            message = str(exc)
            backend_problem = "BACKEND" in message or "not a BasePurger" in message
            messages.append(
                Error(
                    message,
                    hint="BACKEND must be a dotted path such as "
                    "'django_tiercache.purgers.fastly.FastlyPurger'."
                    if backend_problem
                    else "Add the option to this purger's entry in TIERCACHE['PURGERS'].",
                    obj=name,
                    id="tiercache.E004" if backend_problem else "tiercache.E005",
                )
            )
    if (
        purgers
        and tiercache_settings.PURGE_ASYNC is True
        and not tiercache_settings.DISPATCHER
        and not celery_configured()
        and not django_tasks_configured()
    ):
        messages.append(
            Info(
                "PURGE_ASYNC is on but neither Celery (installed, with a broker) nor a Django "
                "tasks backend that runs tasks elsewhere is configured: purges are delivered "
                "synchronously, in the committing process, after each commit.",
                hint="For purges in a worker: pip install django-tiercache[celery] and configure "
                "a Celery app with CELERY_BROKER_URL, or (Django 6) give TASKS a worker backend "
                f"under {SETTING_NAME}['TASK_BACKEND']. To say that synchronous is what you "
                "want: TIERCACHE['PURGE_ASYNC'] = False.",
                id="tiercache.I001",
            )
        )
    return messages


@register(Tags.security)
def check_purger_secrets(**kwargs: Any) -> list[CheckMessage]:
    """E008: a secret that cannot be sent as a token; W005: whitespace around one (stripped)."""
    purgers = tiercache_settings.PURGERS
    if not isinstance(purgers, dict):
        return []
    messages: list[CheckMessage] = []
    for name, config in purgers.items():
        for option in SECRET_OPTIONS if isinstance(config, dict) else ():
            if config.get(option) in (None, ""):
                continue  # unset: E005 when the purger requires it
            value, where = config[option], f"{SETTING_NAME}['PURGERS'][{name!r}][{option!r}]"
            problem = secret_problem(value)
            if problem:
                messages.append(
                    Error(
                        f"{where} {problem}.",
                        hint="Paste the token alone, without quotes; read it with "
                        "os.environ[...].strip() if its source adds a newline.",
                        obj=name,
                        id="tiercache.E008",
                    )
                )
            elif value != value.strip():
                messages.append(
                    CheckWarning(
                        f"{where} has whitespace around it (a newline from a secrets file?); it "
                        "is stripped before use.",
                        hint="Strip it where it is read, e.g. os.environ['FASTLY_PURGE_TOKEN']"
                        ".strip().",
                        obj=name,
                        id="tiercache.W005",
                    )
                )
    return messages


@register(Tags.compatibility)
def check_dispatcher(**kwargs: Any) -> list[CheckMessage]:
    """E007: DISPATCHER is not importable."""
    path = tiercache_settings.DISPATCHER
    if not isinstance(path, str):
        return []
    try:
        import_string(path)
    except ImportError as exc:
        return [
            Error(
                f"{SETTING_NAME}['DISPATCHER'] {path!r} cannot be imported: {exc}",
                hint="Use a dotted path to f(row_ids, using), or None for the default.",
                id="tiercache.E007",
            )
        ]
    return []
