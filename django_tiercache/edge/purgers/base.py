"""``BasePurger``, the interface of every edge backend, and its structured ``PurgeResult``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured


class PurgerConfigError(ImproperlyConfigured):
    """A purger in ``TIERCACHE["PURGERS"]`` is misconfigured; the message names the purger."""


class PurgerSecretError(PurgerConfigError):
    """A purger's secret (token) cannot be sent as it is; the message never shows the secret."""


@dataclass(frozen=True)
class PurgeResult:
    """What one purger did with one purge.

    ``error`` never holds a secret. ``retryable`` is false when sending the same purge again cannot
    succeed (bad token, bad request); ``retry_after`` is the wait, in seconds, the API asked for.
    """

    ok: bool
    keys: tuple[str, ...] = ()
    request_ids: tuple[str, ...] = ()
    error: str = ""
    retry_after: float | None = None
    retryable: bool = True
    status_code: int | None = None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict for ``PurgeRequest.results`` (a key count: the row has the keys)."""
        data = asdict(self)
        data["keys"] = len(self.keys)
        data["request_ids"] = list(self.request_ids)
        return data

    @classmethod
    def merge(cls, results: Sequence[PurgeResult]) -> PurgeResult:
        """Combine the results of several batches: ok only if every batch was."""
        failed = [result for result in results if not result.ok]
        waits = [r.retry_after for r in failed if r.retry_after is not None]
        return cls(
            ok=not failed,
            keys=tuple(key for result in results if result.ok for key in result.keys),
            request_ids=tuple(rid for result in results for rid in result.request_ids),
            error="; ".join(dict.fromkeys(result.error for result in failed if result.error)),
            retry_after=max(waits) if waits else None,
            retryable=all(result.retryable for result in failed),
            status_code=failed[0].status_code if failed else None,
        )


@dataclass
class BasePurger:
    """Purges keys at one edge. Subclasses implement :meth:`send_batch` and :meth:`purge_all`.

    ``options`` is the purger's dict from ``TIERCACHE["PURGERS"]`` without ``BACKEND``; the
    constructor validates it and raises :class:`PurgerConfigError` naming the purger.
    """

    #: Options that must be present and non-empty.
    required_options: ClassVar[tuple[str, ...]] = ()
    #: Default size of one purge call; subclasses may read an option instead.
    default_max_keys_per_request: ClassVar[int] = 256

    name: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        missing = [opt for opt in self.required_options if not self.options.get(opt)]
        if missing:
            raise PurgerConfigError(
                f"Purger {self.name!r} ({type(self).__name__}) is missing required option(s) "
                f"{', '.join(missing)}"
            )

    def __repr__(self) -> str:  # options may hold secrets: never show them
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def soft_purge(self) -> bool:
        """Whether purges are soft (mark stale) unless the caller says otherwise."""
        return bool(self.options.get("SOFT_PURGE", False))

    @property
    def max_keys_per_request(self) -> int:
        return self.default_max_keys_per_request

    def batches(self, keys: Iterable[str]) -> Iterator[list[str]]:
        """``keys`` sorted and deduplicated, in chunks of ``max_keys_per_request``."""
        ordered = sorted(set(keys))
        size = self.max_keys_per_request
        for start in range(0, len(ordered), size):
            yield ordered[start : start + size]

    def purge_keys(self, keys: Iterable[str], soft: bool | None = None) -> PurgeResult:
        """Purge ``keys`` in as few calls as the API allows; stop at the first failed batch."""
        soft = self.soft_purge if soft is None else soft
        results: list[PurgeResult] = []
        for batch in self.batches(keys):
            result = self.send_batch(batch, soft=soft)
            results.append(result)
            if not result.ok:
                break
        return PurgeResult.merge(results)

    def send_batch(self, keys: list[str], *, soft: bool) -> PurgeResult:
        """Send one purge call for at most ``max_keys_per_request`` keys."""
        raise NotImplementedError

    def describe_calls(self, keys: list[str] | None, *, soft: bool | None = None) -> list[str]:
        """One line per call this purger makes for one batch of ``keys`` (None: purge
        everything), for a dry run. Never shows a secret; override to show the wire format."""
        kind = type(self).__name__
        if keys is None:
            return [f"{kind}.purge_all()"]
        soft = self.soft_purge if soft is None else soft
        return [f"{kind}.send_batch({len(keys)} keys, soft={soft})"]

    def purge_all(self) -> PurgeResult:
        """Purge everything this purger's edge caches."""
        raise NotImplementedError
