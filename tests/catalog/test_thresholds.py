"""Every catalog range filter includes its boundary: ``--min-sqnr 40`` keeps an SQNR of 40.

The seed's values are random, so none of them sits on a threshold by chance; here each
threshold is set to a value stored in the catalog, and the row holding it must come back
(and must not once the threshold moves past it). On SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from mono_quant.catalog import ArtifactQuery, list_artifacts
from tests.catalog import seed as seedmod


@pytest.fixture
def seeded(catalog_url):
    catalog, records = seedmod.seeded_catalog(catalog_url, n=24)
    yield catalog, records
    catalog.dispose()


def _ids(catalog, **query) -> list[int]:
    with catalog.begin() as session:
        return sorted(a.id for a in list_artifacts(session, ArtifactQuery(limit=None, **query)))


def _boundary(records, field):
    """The record holding the median finite value of ``field`` (others lie on both sides)."""
    held = sorted((r for r in records if r[field] is not None
                   and not (isinstance(r[field], float) and math.isinf(r[field]))),
                  key=lambda r: r[field])
    return held[len(held) // 2]


# field -> (query parameter, a value just past the boundary in the excluding direction)
CASES = {
    "weight_sqnr_db": ("min_sqnr", lambda v: math.nextafter(v, math.inf)),
    "output_cosine": ("min_cosine", lambda v: math.nextafter(v, math.inf)),
    "size_bytes": ("max_size", lambda v: v - 1),
    "created_at": ("since", lambda v: v + timedelta(microseconds=1)),
}


@pytest.mark.parametrize("field", list(CASES), ids=list(CASES))
def test_a_value_equal_to_the_threshold_is_kept(seeded, field):
    catalog, records = seeded
    param, past = CASES[field]
    row = _boundary(records, field)
    value = row[field]
    at = _ids(catalog, **{param: value})
    assert row["id"] in at
    assert at == sorted(seedmod.reference(records, ArtifactQuery(limit=None, **{param: value})))
    beyond = _ids(catalog, **{param: past(value)})
    assert row["id"] not in beyond
    # moving the threshold by the smallest step drops only rows that sit exactly on it
    assert set(at) - set(beyond) == {r["id"] for r in records if r[field] == value}
