"""The tests marked ``postgres`` (threads or processes sharing the test database: a Celery worker,
the end-to-end shop behind Varnish; DISTINCT ON), under the default
SQLite run too: tests/conftest.py leaves them out of a SQLite session that collects this module,
and this test runs them in a pytest of their own on a throw-away PostgreSQL server
(tests/pg_cluster.py). Skipped, with the reason, only where the server binaries are absent.
On PostgreSQL (``TIERCACHE_TEST_DATABASE=postgres``) they run in the session itself and this
test is deselected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pg_cluster import find_bindir, start_server, unavailable

ROOT = Path(__file__).resolve().parent.parent
#: The only reasons a test marked postgres may skip here: what a fresh machine may lack.
MISSING = ("is not installed", "not found: apt-get", "no Celery broker")
PYTEST_ARGS = ("-q", "-rs", "-p", "no:cacheprovider", "-m", "postgres", "tests")


@pytest.mark.postgres_runner
def test_the_postgres_tests_pass_on_a_private_server() -> None:
    reason, bindir = unavailable(), find_bindir()
    if reason is not None or bindir is None:
        pytest.skip(f"the tests marked postgres need PostgreSQL: {reason}")
    with start_server(bindir) as server:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", *PYTEST_ARGS],
            cwd=ROOT,
            env={**os.environ, **server.env()},
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
    output = result.stdout[-6000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, output
    assert " passed" in summary, output
    # Every one of them ran, unless a program they start or a broker is missing.
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all(any(why in line for why in MISSING) for line in skipped), output
    print(f"\n{summary}")
