"""``artifact_record``: the flat, JSON-ready row that ``mono-quant artifacts --json`` prints."""

from __future__ import annotations

import json

import pytest

from mono_quant.catalog import Catalog, artifact_record, get_artifact
from mono_quant.catalog.queries import RECORD_FIELDS
from tests.catalog import seed as seedmod


@pytest.fixture
def seeded(catalog_url):
    catalog = Catalog(catalog_url)
    with catalog.begin() as session:
        records = seedmod.seed(session, n=3)
    yield catalog, records
    catalog.dispose()


def test_record_holds_every_field_as_plain_values(seeded):
    catalog, records = seeded
    r = records[1]
    with catalog.begin() as session:
        rec = artifact_record(get_artifact(session, r["id"]))
    # no info unless asked for; "observer" repeats weight_observer under its deprecated name
    assert list(rec) == [*RECORD_FIELDS, "observer"]
    expected = {
        "id": r["id"], "model_source": r["model_source"], "model_digest": r["model_digest"],
        "scheme": r["scheme"], "granularity": r["granularity"], "group_size": r["group_size"],
        "mode": r["mode"], "format": r["format"], "dtype": "int8",
        "weight_sqnr_db": r["weight_sqnr_db"], "weight_sqnr_db_min": r["weight_sqnr_db_min"],
        "output_cosine": r["output_cosine"], "size_bytes": r["size_bytes"],
        "compression_ratio": r["compression_ratio"], "batch_id": r["batch_id"],
        "job_status": r["job_status"], "sha256": r["sha256"],
        "created_at": r["created_at"].isoformat(),
    }
    assert {k: rec[k] for k in expected} == expected
    # str enums and datetimes come out as plain JSON values
    assert type(rec["format"]) is str and type(rec["job_status"]) is str
    assert type(rec["created_at"]) is str
    assert json.loads(json.dumps(rec))["created_at"] == r["created_at"].isoformat()


def test_record_with_info(seeded):
    catalog, records = seeded
    r = records[0]
    with catalog.begin() as session:
        rec = artifact_record(get_artifact(session, r["id"]), with_info=True)
    assert list(rec) == [*RECORD_FIELDS, "observer", "info"]
    assert rec["info"] == r["info"].to_dict()
