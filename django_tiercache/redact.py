"""Keep secrets out of text that may reach a log, an exception message, a row or the admin.

A secret is masked in every form it may take in such text: as configured, without the whitespace
a copy-paste from a secrets file leaves around it, and escaped as ``repr()``, JSON or a URL
would escape it (``requests`` shows a bad header value with ``repr()``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from urllib.parse import quote

from django_tiercache.conf import tiercache_settings

MASK = "********"
#: Option names, in a ``TIERCACHE["PURGERS"]`` entry, whose values are secrets.
SECRET_OPTIONS = ("API_TOKEN", "TOKEN", "API_KEY", "PASSWORD")
#: Shorter fragments are not masked on their own (they would mask ordinary words).
MIN_SECRET_CHARS = 4


def secrets() -> set[str]:
    """Every secret option value in ``TIERCACHE["PURGERS"]``."""
    values: set[str] = set()
    purgers = tiercache_settings.PURGERS
    if isinstance(purgers, dict):
        for config in purgers.values():
            if isinstance(config, dict):
                values.update(str(config[name]) for name in SECRET_OPTIONS if config.get(name))
    return values


def forms(secret: str) -> set[str]:
    """The ways ``secret`` may be written in text: raw, stripped of whitespace and quotes,
    and escaped by ``repr()``, JSON and URL quoting."""
    cores = {secret, secret.strip(), secret.strip().strip("'\"").strip()}
    found: set[str] = set()
    for core in cores:
        found |= {core, repr(core)[1:-1], json.dumps(core)[1:-1], quote(core, safe="")}
        found.add(core.encode("unicode_escape").decode("ascii"))
    return {form for form in found if len(form) >= MIN_SECRET_CHARS}


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every form of every configured secret (and of ``extra``) masked."""
    masks: set[str] = set()
    for secret in {*secrets(), *(str(value) for value in extra if value)}:
        masks |= forms(secret)
    for form in sorted(masks, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


class RedactFilter(logging.Filter):
    """A logging filter that masks secrets in a record's message, arguments and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not secrets():
            return True
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with a :class:`RedactFilter`: what it logs holds no secret."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactFilter) for f in logger.filters):
        logger.addFilter(RedactFilter())
    return logger
