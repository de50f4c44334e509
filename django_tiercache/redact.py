"""Keep secrets out of text that may reach a log, an exception message or the admin."""

from __future__ import annotations

from django_tiercache.conf import tiercache_settings

MASK = "********"
_SECRET_OPTIONS = ("API_TOKEN", "TOKEN", "API_KEY", "PASSWORD")


def secrets() -> set[str]:
    """Every secret option value in ``TIERCACHE["PURGERS"]``."""
    values: set[str] = set()
    purgers = tiercache_settings.PURGERS
    if isinstance(purgers, dict):
        for config in purgers.values():
            if isinstance(config, dict):
                values.update(str(config[name]) for name in _SECRET_OPTIONS if config.get(name))
    return values


def redact(text: str) -> str:
    """``text`` with every configured secret replaced by a mask."""
    for secret in sorted(secrets(), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
