"""How a test that passes in the baseline but not with the query tier is classified.

``DOCUMENTED`` lists the differences docs/query.rst explains, by test id, with the reason. Every
other new failure is a query-count artefact (fewer queries, because of hits), undocumented extra
queries, a library error (an exception Django does not raise, or one Django raises that is not
raised) or a wrong result.
"""

from __future__ import annotations

import re

_SLOW_DELETE = (
    "a tracked model has post_delete receivers, so Django deletes it on its slow path: it "
    "collects the rows (a SELECT) before deleting them by primary key"
)
_UPDATE_READS = (
    "update() and bulk_update() read the rows before and after writing, to invalidate their "
    "keys as they were and as they are"
)

#: Test id -> the documented reason (docs/query.rst, "Differences from Django").
DOCUMENTED: dict[str, str] = {
    **{
        f"delete.tests.FastDeleteTests.{name}": _SLOW_DELETE
        for name in (
            "test_fast_delete_aggregation",
            "test_fast_delete_all",
            "test_fast_delete_combined_relationships",
            "test_fast_delete_fk",
            "test_fast_delete_full_match",
            "test_fast_delete_inheritance",
            "test_fast_delete_instance_set_pk_none",
            "test_fast_delete_joined_qs",
            "test_fast_delete_large_batch",
            "test_fast_delete_qs",
        )
    },
    "delete.tests.DeletionTests.test_only_referenced_fields_selected": _SLOW_DELETE,
    "delete_regress.tests.DeleteTests.test_self_reference_with_through_m2m_at_second_level": (
        _SLOW_DELETE
    ),
    "delete_regress.tests.SetQueryCountTests.test_set_querycount": _SLOW_DELETE,
    **{
        f"delete_regress.tests.Ticket19102Tests.test_ticket_19102_{name}": _SLOW_DELETE
        for name in ("annotate", "defer", "extra", "select_related")
    },
    **{
        f"queries.test_bulk_update.BulkUpdateNoteTests.{name}": _UPDATE_READS
        for name in (
            "test_batch_size",
            "test_foreign_keys_do_not_lookup",
            "test_multiple_fields",
            "test_simple",
        )
    },
    "queries.test_bulk_update.BulkUpdateTests.test_database_routing": _UPDATE_READS,
    "model_inheritance.tests.ModelInheritanceTests.test_update_parent_filtering": (
        _UPDATE_READS + " (the test takes the first statement of update() to be the UPDATE)"
    ),
    "generic_relations.tests.GenericRelationsTests.test_add_bulk": (
        _UPDATE_READS + " (add(bulk=True) is a queryset update())"
    ),
    "many_to_many.tests.ManyToManyTests.test_fast_add_ignore_conflicts": (
        "m2m_changed reads the rows added, to invalidate their keys"
    ),
}

#: Test id -> why a hit makes it fail without any difference in results (not counted red).
ARTEFACTS: dict[str, str] = {
    "prefetch_related.tests.PrefetchRelatedTests.test_filter_deferred": (
        "counts Query.add_q calls: a hit builds no query"
    ),
}

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
    if test_id in ARTEFACTS:
        return QUERY_COUNT
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
