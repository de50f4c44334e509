"""The test runner ``runtests.py`` uses under :mod:`djangosuite.settings`: installs the mode and
writes every test's outcome (with its traceback) to ``DJANGOSUITE_OUT`` as JSON."""

from __future__ import annotations

import json
import os
import traceback
import unittest
from typing import Any

from django.test.runner import DiscoverRunner

from djangosuite import modes


class RecordingResult(unittest.TextTestResult):
    """A text result that also keeps each test's outcome by test id."""

    outcomes: dict[str, tuple[str, str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes = {}

    def _note(self, test: Any, outcome: str, err: Any = None) -> None:
        text = "".join(traceback.format_exception(*err)) if err else ""
        previous = self.outcomes.get(test.id())
        if previous is None or previous[0] in ("ok", "skip"):
            self.outcomes[test.id()] = (outcome, text)

    def startTest(self, test: Any) -> None:
        if modes.empties_cache_per_test(os.environ["DJANGOSUITE_MODE"]):
            modes.empty_cache()
        super().startTest(test)

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._note(test, "ok")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._note(test, "fail", err)

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._note(test, "error", err)

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._note(test, "skip")

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._note(test, "ok")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._note(test, "fail")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._note(test, "fail" if failed else "error", err)


class SuiteRunner(DiscoverRunner):
    """Django's DiscoverRunner with the harness mode installed and outcomes recorded."""

    def setup_test_environment(self, **kwargs: Any) -> None:
        super().setup_test_environment(**kwargs)
        modes.install(os.environ["DJANGOSUITE_MODE"])

    def teardown_test_environment(self, **kwargs: Any) -> None:
        modes.empty_cache()  # nothing of this run stays in the cache
        super().teardown_test_environment(**kwargs)

    def get_resultclass(self) -> Any:
        return super().get_resultclass() or RecordingResult

    def suite_result(self, suite: Any, result: Any, **kwargs: Any) -> int:
        outcomes = getattr(result, "outcomes", {})
        with open(os.environ["DJANGOSUITE_OUT"], "w", encoding="utf-8") as out:
            json.dump(outcomes, out)
        return super().suite_result(suite, result, **kwargs)  # type: ignore[no-any-return]
