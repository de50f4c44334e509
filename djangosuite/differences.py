"""How a test that passes in the baseline but not with the query tier is classified.

``DOCUMENTED`` lists the differences docs/query.rst explains, by test id, with the reason. Every
other new failure is a query-count artefact (fewer queries, because of hits), undocumented extra
queries, a library error (an exception Django does not raise, or one Django raises that is not
raised) or a wrong result.
"""

from __future__ import annotations

import re

#: Test id -> the documented reason (docs/query.rst, "Differences from Django").
DOCUMENTED: dict[str, str] = {}

WRONG_RESULT = "wrong result"
LIBRARY_ERROR = "library error"
EXTRA_QUERIES = "undocumented extra queries"
DOCUMENTED_DIFFERENCE = "documented difference"
QUERY_COUNT = "query-count artefact"
CLASSES = (WRONG_RESULT, LIBRARY_ERROR, EXTRA_QUERIES, DOCUMENTED_DIFFERENCE, QUERY_COUNT)
#: Classes that make the table red.
RED = (WRONG_RESULT, LIBRARY_ERROR, EXTRA_QUERIES)

_QUERY_COUNT = re.compile(r"(\d+) != (\d+) : \1 queries executed, \2 expected")


def classify(test_id: str, outcome: str, text: str) -> str:
    """The class of a new failure (``outcome`` "fail" or "error", ``text`` its traceback)."""
    if test_id in DOCUMENTED:
        return DOCUMENTED_DIFFERENCE
    if outcome == "error":
        return LIBRARY_ERROR
    counted = _QUERY_COUNT.search(text)
    if counted:
        return QUERY_COUNT if int(counted.group(1)) < int(counted.group(2)) else EXTRA_QUERIES
    if " not raised" in text or "django_tiercache" in text:
        return LIBRARY_ERROR  # Django raises here and the library does not, or the reverse
    return WRONG_RESULT


def summary(text: str) -> str:
    """The query counts, or the last line of a traceback (the exception), shortened."""
    counted = _QUERY_COUNT.search(text)
    if counted:
        return counted.group(0)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= 160 else last[:157] + "..."
