"""``manage.py tiercache_purge``: purge keys, models, objects or everything at every cache tier.

The purge goes through the outbox like any other: a ``PurgeRequest`` row, the query tier first,
then every edge purger (enqueued, or at once with ``--sync``). One line per tier is printed; the
exit status is 0 only when nothing failed, 2 when the command line names something unknown (and
nothing was sent).
"""

from __future__ import annotations

import difflib
import sys
from argparse import ArgumentParser
from collections.abc import Sequence
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, models

from django_tiercache import invalidation, manual
from django_tiercache.conf import tiercache_settings
from django_tiercache.edge import outbox
from django_tiercache.edge.purgers import BasePurger, PurgeResult, get_purgers
from django_tiercache.keys import normalize_key, table_keys
from django_tiercache.models import PurgeRequest
from django_tiercache.redact import redact
from django_tiercache.signals import instance_keys

#: Exit status when the command line names something unknown.
USAGE_ERROR = 2


def usage_error(message: str) -> CommandError:
    return CommandError(message, returncode=USAGE_ERROR)


class Command(BaseCommand):
    help = (
        "Purge surrogate keys at every cache tier: query-tier versions first, then every edge "
        "purger. Keys may be copied from a Surrogate-Key or Cache-Tag response header."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        """The command line, one ``add_argument`` per option (over 50 lines: a flat list of
        declarations, read as the ``--help`` they produce)."""
        parser.add_argument("keys", nargs="*", metavar="KEY", help="Surrogate keys to purge.")
        parser.add_argument(
            "--model",
            action="append",
            default=[],
            dest="models",
            metavar="app_label.Model",
            help="Purge the table key(s) of a model. Repeatable.",
        )
        parser.add_argument(
            "--object",
            action="append",
            default=[],
            dest="objects",
            metavar="app_label.Model:PK",
            help="Purge every key a change to this instance purges. Repeatable.",
        )
        parser.add_argument(
            "--all",
            action="store_true",
            dest="purge_all",
            help="Purge everything: every edge and the whole query tier. Needs --yes.",
        )
        parser.add_argument("--yes", action="store_true", help="Confirm --all.")
        parser.add_argument(
            "--no-input",
            "--noinput",
            action="store_false",
            dest="interactive",
            help="Never prompt (--all then needs --yes).",
        )
        parser.add_argument(
            "--backend",
            action="append",
            dest="backends",
            metavar="NAME",
            help="Only this purger of TIERCACHE['PURGERS']. Repeatable.",
        )
        parser.add_argument(
            "--sync", action="store_true", help="Purge now instead of enqueuing the purge."
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Print the batches and API calls that would be made; send nothing.",
        )
        parser.add_argument(
            "--redrive",
            action="store_true",
            help="Send pending and failed purge requests again, now (whatever their backoff).",
        )
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Delete done purge requests created more than --older-than seconds ago.",
        )
        parser.add_argument(
            "--older-than",
            type=float,
            default=None,
            metavar="SECONDS",
            help="With --redrive: only requests created at least this long ago (default 60). "
            "With --prune (required): e.g. 604800 for a week.",
        )
        parser.add_argument(
            "--database", default=DEFAULT_DB_ALIAS, help="Database of the purge outbox."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        purgers = self.select_purgers(options["backends"])
        targets = options["keys"] or options["models"] or options["objects"]
        if options["prune"]:
            if targets or options["purge_all"] or options["redrive"]:
                raise usage_error("--prune takes no keys, --model, --object, --all or --redrive.")
            self.prune(options)
            return
        if options["older_than"] is not None and not options["redrive"]:
            raise usage_error("--older-than goes with --redrive or --prune.")
        if options["redrive"]:
            if targets or options["purge_all"]:
                raise usage_error("--redrive takes no keys, --model, --object or --all.")
            self.redrive(purgers, options)
            return
        if options["purge_all"] and targets:
            raise usage_error("--all purges everything: give no keys, --model or --object.")
        if not (targets or options["purge_all"]):
            raise usage_error("Nothing to purge: give keys, --model, --object, --all or --redrive.")
        keys = set() if options["purge_all"] else self.collect_keys(options)
        if options["dry_run"]:
            self.dry_run(purgers, keys, purge_all=options["purge_all"])
            return
        if options["purge_all"] and not options["yes"]:
            self.confirm_all(options["interactive"])
        using = options["database"]
        row = manual.request_purge(
            keys,
            purge_all=options["purge_all"],
            backends=None if options["backends"] is None else list(purgers),
            using=using,
            dispatch=not options["sync"],
        )
        sent = outbox.deliver([row.pk], using, backends=list(purgers)) if options["sync"] else {}
        row.refresh_from_db()
        self.report([row], list(get_purgers()), sent)

    # -- arguments ------------------------------------------------------------------------------

    def select_purgers(self, names: Sequence[str] | None) -> dict[str, BasePurger]:
        try:
            configured = get_purgers()
        except ImproperlyConfigured as exc:
            raise usage_error(redact(str(exc))) from exc
        if names is None:
            return dict(configured)
        unknown = sorted(set(names) - set(configured))
        if unknown:
            known = ", ".join(configured) or "none: TIERCACHE['PURGERS'] is empty"
            raise usage_error(f"Unknown purger {', '.join(unknown)}; configured: {known}.")
        return {name: purger for name, purger in configured.items() if name in names}

    def collect_keys(self, options: dict[str, Any]) -> set[str]:
        keys: set[str] = set()
        for key in options["keys"]:
            if any(separator in key.strip() for separator in " ,\t\n\r"):
                self.stderr.write(
                    f"Note: {key!r} is purged as one key. Pass the keys of a Surrogate-Key or "
                    "Cache-Tag header as separate arguments."
                )
            try:
                keys.add(normalize_key(key.strip()))
            except (TypeError, ValueError) as exc:
                raise usage_error(f"Invalid key {key!r}: {exc}.") from exc
        for label in options["models"]:
            keys.update(table_keys(self.get_model(label)))
        for spec in options["objects"]:
            keys.update(instance_keys(self.get_object(spec, options["database"])))
        return keys

    def get_model(self, label: str) -> type[models.Model]:
        try:
            return apps.get_model(label)
        except (LookupError, ValueError) as exc:
            labels = {model._meta.label.lower(): model._meta.label for model in apps.get_models()}
            close = difflib.get_close_matches(label.lower(), labels, n=2, cutoff=0.75)
            hint = f" Did you mean {' or '.join(labels[c] for c in close)}?" if close else ""
            raise usage_error(
                f"Unknown model {label!r}: use app_label.ModelName, e.g. auth.User.{hint}"
            ) from exc

    def get_object(self, spec: str, using: str) -> models.Model:
        label, separator, raw_pk = spec.partition(":")
        if not (separator and raw_pk):
            raise usage_error(f"--object {spec!r}: use app_label.Model:PK, e.g. shop.Product:42.")
        model = self.get_model(label)
        try:
            pk = model._meta.pk.to_python(raw_pk) if model._meta.pk else raw_pk
        except ValidationError as exc:
            raise usage_error(f"--object {spec!r}: {' '.join(exc.messages)}") from exc
        # Model._default_manager: public API despite the underscore (Django's manager docs).
        instance = model._default_manager.using(using).filter(pk=pk).first()
        if instance is None:
            raise usage_error(
                f"--object {spec!r}: no {model._meta.label} with primary key {raw_pk!r}. To purge "
                f"the keys of a deleted object, pass them as keys, e.g. "
                f"{model._meta.label_lower}:{raw_pk}."
            )
        return instance

    def confirm_all(self, interactive: bool) -> None:
        if not (interactive and sys.stdin.isatty()):
            raise usage_error(
                "--all purges every cached page at every edge and the whole query tier; "
                "add --yes to confirm."
            )
        answer = input(
            "This purges EVERYTHING: every cached page at every edge and the whole query tier.\n"
            "Type 'yes' to continue: "
        )
        if answer.strip().lower() != "yes":
            raise CommandError("Cancelled: nothing was purged.")

    # -- dry run --------------------------------------------------------------------------------

    def dry_run(self, purgers: dict[str, BasePurger], keys: set[str], *, purge_all: bool) -> None:
        self.stdout.write("Dry run: nothing is sent.")
        if purge_all:
            prefix = tiercache_settings.KEY_PREFIX
            self.stdout.write(f"query: would drop every entry under the prefix {prefix!r}")
        else:
            self.stdout.write(f"query: would bump the versions of {count(len(keys), 'key')}")
        self.plan(purgers, keys, purge_all=purge_all)

    def plan(self, purgers: dict[str, BasePurger], keys: set[str], *, purge_all: bool) -> None:
        if not purgers:
            self.stdout.write("No edge purger selected: only the query tier would be purged.")
        for name, purger in purgers.items():
            kind = type(purger).__name__
            if purge_all:
                self.stdout.write(f"{name} ({kind}): would purge everything")
                for call in purger.describe_calls(None):
                    self.stdout.write(f"  {call}")
                continue
            batches = list(purger.batches(keys))
            self.stdout.write(
                f"{name} ({kind}): {count(len(keys), 'key')} in "
                f"{count(len(batches), 'batch', 'batches')} of at most "
                f"{purger.max_keys_per_request}"
            )
            for number, batch in enumerate(batches, 1):
                for call in purger.describe_calls(batch):
                    self.stdout.write(f"  batch {number}: {call}")
                self.stdout.write(f"    keys: {' '.join(batch)}")

    # -- redrive --------------------------------------------------------------------------------

    def redrive(self, purgers: dict[str, BasePurger], options: dict[str, Any]) -> None:
        using = options["database"]
        if options["backends"] is not None and not (options["sync"] or options["dry_run"]):
            raise usage_error(
                "--redrive with --backend needs --sync (the enqueued task purges "
                "at every purger that has not succeeded yet)."
            )
        older_than = 60.0 if options["older_than"] is None else options["older_than"]
        row_ids = outbox.stale_rows(
            older_than, using, include_failed=True, limit=None, ignore_backoff=True
        )
        if not row_ids:
            self.stdout.write(
                f"Nothing to redrive: no pending or failed purge request older than "
                f"{older_than:g}s."
            )
            return
        rows = list(PurgeRequest.objects.using(using).filter(pk__in=row_ids).order_by("created"))
        if options["dry_run"]:
            self.stdout.write(
                f"Dry run: nothing is sent. {count(len(rows), 'request')} to redrive:"
            )
            for row in rows:
                self.stdout.write(f"  {row} attempts={row.attempts}")
            for name, purger in purgers.items():
                todo = [row for row in rows if not row.results.get(name, {}).get("ok")]
                if not todo:
                    self.stdout.write(f"{name}: already purged these requests")
                    continue
                self.plan(
                    {name: purger},
                    {key for row in todo for key in row.keys},
                    purge_all=any(row.purge_all for row in todo),
                )
            return
        sent: dict[str, PurgeResult] = {}
        if options["sync"]:
            for start in range(0, len(row_ids), outbox.REDRIVE_CHUNK):
                chunk = row_ids[start : start + outbox.REDRIVE_CHUNK]
                outcome = outbox.deliver(chunk, using, backends=list(purgers), include_failed=True)
                for name, result in outcome.items():
                    sent[name] = PurgeResult.merge([*filter(None, [sent.get(name)]), result])
        else:
            manual.retry(row_ids, using)
        rows = list(PurgeRequest.objects.using(using).filter(pk__in=row_ids).order_by("created"))
        self.report(rows, list(purgers), sent)

    def prune(self, options: dict[str, Any]) -> None:
        if options["older_than"] is None:
            raise usage_error("--prune needs --older-than SECONDS, e.g. 604800 for a week.")
        deleted = outbox.prune(options["older_than"], options["database"])
        self.stdout.write(
            f"Pruned {count(deleted, 'done purge request')} created more than "
            f"{options['older_than']:g}s ago; pending and failed requests are kept."
        )

    # -- report ---------------------------------------------------------------------------------

    def report(
        self,
        rows: Sequence[PurgeRequest],
        purgers: Sequence[str],
        sent: dict[str, PurgeResult] | None = None,
    ) -> None:
        """One line per tier, then the requests' status; exit status 1 when a tier failed.

        ``sent`` holds what each purger was sent now (``--sync``): the keys it purged are counted
        from it, not from the rows (a redrive sends only the keys a purger still lacked).
        """
        sent = sent or {}
        purge_all = any(row.purge_all for row in rows)
        failures: list[str] = []
        for tier in invalidation.tier_names():  # the query tier
            outcomes = [row.results.get(tier) or {"ok": True} for row in rows]
            if any(outcome.get("ok") is False for outcome in outcomes) or len(rows) == 1:
                keys = len({k for row in rows for k in row.keys})
                ok_text = (
                    "ok, every entry dropped"
                    if purge_all
                    else f"ok, versions of {count(keys, 'key')} bumped"
                )
                failures += self.tier_line(tier, outcomes, ok_text)
        if not purgers:
            self.stdout.write("No edge purger configured: only the query tier was purged.")
        for name in purgers:
            outcomes = [row.results.get(name) for row in rows]
            if purge_all:
                ok_text = "ok, everything purged"
            elif name in sent:
                ok_text = f"ok, {count(len(sent[name].keys), 'key')} purged"
            elif len(rows) == 1:  # delivered by the dispatcher: every key of the row
                ok_text = f"ok, {count(len(rows[0].keys), 'key')} purged"
            else:
                ok_text = "ok, every key of these requests purged"
            failures += self.tier_line(name, outcomes, ok_text)
        if len(rows) == 1:
            self.stdout.write(f"PurgeRequest #{rows[0].pk}: {rows[0].status}")
        else:
            counts = {status: sum(row.status == status for row in rows) for status in STATUSES}
            summary = ", ".join(f"{count} {status}" for status, count in counts.items() if count)
            self.stdout.write(f"{count(len(rows), 'purge request')}: {summary}")
        if failures:
            raise CommandError(f"Purge failed at: {', '.join(failures)}.")

    def tier_line(
        self, name: str, outcomes: Sequence[dict[str, Any] | None], ok_text: str
    ) -> list[str]:
        """Print the line of one tier; ``[name]`` when it failed."""
        failed = [o for o in outcomes if o and not o.get("ok")]
        if failed:
            errors = "; ".join(dict.fromkeys(redact(str(o.get("error") or "")) for o in failed))
            later = all(o.get("retryable", True) for o in failed)
            hint = (
                "transient; pending for the next redrive"
                if later
                else "refused; fix the cause, then run --redrive"
            )
            self.stdout.write(self.style.ERROR(f"{name}: FAILED ({hint}): {errors}"))
            return [name]
        if outcomes and all(o and o.get(manual.SKIPPED) for o in outcomes):
            self.stdout.write(f"{name}: skipped (not selected with --backend)")
        elif any(o is None for o in outcomes):
            self.stdout.write(f"{name}: enqueued")
        else:
            self.stdout.write(self.style.SUCCESS(f"{name}: {ok_text}"))
        return []


STATUSES = tuple(PurgeRequest.Status.values)


def count(number: int, singular: str, plural: str | None = None) -> str:
    """``"1 key"``, ``"2 keys"``."""
    return f"{number} {singular if number == 1 else plural or singular + 's'}"
