"""``python -m djangosuite [--mode M ...] [--module NAME ...] [--strict]``: see the package doc."""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import django

from djangosuite import differences
from djangosuite.modes import MODES

ROOT = Path(__file__).resolve().parent.parent

MODULES = [
    *("basic", "lookup", "queries", "aggregation", "aggregation_regress", "annotations"),
    *("expressions", "many_to_one", "many_to_many", "m2m_through", "prefetch_related"),
    *("select_related", "select_related_onetoone", "one_to_one", "model_inheritance"),
    *("get_or_create", "update", "delete", "delete_regress", "custom_managers", "ordering"),
    *("null_queries", "dates", "datetimes", "extra_regress", "known_related_objects"),
    *("generic_relations", "reverse_lookup", "or_lookups", "raw_query", "bulk_create", "fixtures"),
]
POSTGRES_MODULES = ("distinct_on_fields",)


def django_tests() -> Path:
    """The ``tests/`` folder of the sdist of the installed Django, downloaded once into the venv."""
    version = django.__version__
    home = Path(sys.prefix) / "django-src"
    tests = home / f"django-{version}" / "tests"
    if (tests / "runtests.py").exists():
        return tests
    home.mkdir(parents=True, exist_ok=True)
    archive = home / f"django-{version}.tar.gz"
    if not archive.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", "--dest", str(home), f"django=={version}"],
            check=True,
        )  # fmt: skip
    prefix = f"django-{version}/tests/"
    with tarfile.open(archive) as sdist:
        members = [m for m in sdist.getmembers() if m.name.startswith(prefix)]
        sdist.extractall(home, members=members, filter="data")
    return tests


def run_mode(tests: Path, mode: str, modules: list[str], timeout: float) -> dict[str, list[str]]:
    """Run ``modules`` in ``mode``; each test id's outcome and traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "outcomes.json"
        env = {
            **os.environ,
            "DJANGOSUITE_MODE": mode,
            "DJANGOSUITE_OUT": str(out),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        command = [
            sys.executable, "-W", "ignore::DeprecationWarning", "runtests.py",
            "--settings=djangosuite.settings", "--parallel=1", "--noinput", "-v", "0", *modules,
        ]  # fmt: skip
        log = Path(sys.prefix) / "django-src" / f"{mode}-{_database()}.log"
        with open(log, "w", encoding="utf-8") as output:
            process = subprocess.run(
                command, cwd=tests, env=env, stdout=output, stderr=subprocess.STDOUT,
                timeout=timeout, check=False,
            )  # fmt: skip
        if not out.exists():  # the run itself broke: one library error stands for it
            print(f"{mode}: runtests.py exited {process.returncode} without results; see {log}")
            return {f"runtests ({mode})": ["error", log.read_text(encoding="utf-8")[-2000:]]}
        return json.loads(out.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _database() -> str:
    return os.environ.get("TIERCACHE_TEST_DATABASE", "sqlite")


def module_of(test_id: str) -> str:
    """The module of ``aggregation.tests.X.test_y`` or ``setUpClass (aggregation.tests.X)``."""
    if "(" in test_id:
        test_id = test_id.split("(", 1)[1]
    return test_id.split(".", 1)[0]


def tally(outcomes: dict[str, list[str]]) -> dict[str, collections.Counter[str]]:
    counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for test_id, (outcome, _text) in outcomes.items():
        counts[module_of(test_id)][outcome] += 1
        counts[module_of(test_id)]["tests"] += 1
    return counts


def compare(
    baseline: dict[str, list[str]], cached: dict[str, list[str]]
) -> list[tuple[str, str, str]]:
    """New failures of ``cached``: (test id, class, summary)."""
    found = []
    for test_id, (outcome, text) in sorted(cached.items()):
        if outcome in ("fail", "error") and baseline.get(test_id, ["ok"])[0] not in (
            "fail",
            "error",
        ):
            found.append(
                (test_id, differences.classify(test_id, outcome, text), differences.summary(text))
            )
    return found


def report(
    modules: list[str],
    baseline: dict[str, list[str]],
    results: dict[str, dict[str, list[str]]],
) -> int:
    """Print the tables; the number of red new failures (see ``differences.RED``)."""
    base = tally(baseline)
    red = 0
    print(f"\nDjango {django.__version__} ORM suite on {_database()}, every queryset cached")
    for mode, outcomes in results.items():
        counts = tally(outcomes)
        new = compare(baseline, outcomes)
        by_module: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        for test_id, klass, _ in new:
            by_module[module_of(test_id)][klass] += 1
        print(f"\n== mode {mode}: {MODES[mode]}")
        header = f"{'module':24} {'tests':>5} {'fail':>9} {'error':>9}  new failures by class"
        print(header)
        print("-" * len(header))
        for module in modules:
            b, c = (
                base.get(module, collections.Counter()),
                counts.get(module, collections.Counter()),
            )
            classes = ", ".join(f"{n} {k}" for k, n in sorted(by_module[module].items()))
            print(
                f"{module:24} {c['tests']:>5} {b['fail']:>4}->{c['fail']:<4} "
                f"{b['error']:>4}->{c['error']:<4}  {classes or '-'}"
            )
        totals = collections.Counter(klass for _, klass, _ in new)
        mode_red = sum(totals[k] for k in differences.RED)
        red += mode_red
        print(
            f"{'total':24} {sum(c['tests'] for c in counts.values()):>5}  "
            + ", ".join(f"{totals[k]} {k}" for k in differences.CLASSES)
        )
        for test_id, klass, summary in new:
            print(f"  [{klass}] {test_id}: {summary}")
    return red


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m djangosuite", description=__doc__)
    cached_modes = [m for m in MODES if m != "baseline"]
    parser.add_argument("--mode", action="append", choices=cached_modes, help="default: all")
    parser.add_argument("--module", action="append", help="a Django test module (default: all)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per mode")
    parser.add_argument(
        "--break-invalidation",
        action="store_true",
        help="invalidation a no-op in the cached modes: shows that the suite sees stale results",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 on any wrong result, library error or undocumented extra queries",
    )
    args = parser.parse_args(argv)
    modules = args.module or [
        *MODULES,
        *(POSTGRES_MODULES if _database() == "postgres" else ()),
    ]
    tests = django_tests()
    if args.break_invalidation:
        os.environ["DJANGOSUITE_BREAK_INVALIDATION"] = "1"
    results = {}
    for mode in ["baseline", *(args.mode or cached_modes)]:
        started = time.monotonic()
        results[mode] = run_mode(tests, mode, modules, args.timeout)
        print(
            f"{mode}: {len(results[mode])} tests in {time.monotonic() - started:.0f}s", flush=True
        )
    baseline = results.pop("baseline")
    red = report(modules, baseline, results)
    print(
        f"\n{red} wrong result(s), library error(s) or undocumented extra queries over "
        f"{len(results)} mode(s)"
    )
    return 1 if red and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
