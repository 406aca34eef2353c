"""run_job with the LLM-grade int8 options: perplexity and the new columns reach the
catalog; an unmeetable accuracy target fails the job as bad_config, with no retry."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mono_quant.catalog import Artifact, Catalog, ErrorKind
from mono_quant.worker.job import run_job
from tests.io.hf_fixture import CALIBRATION_TEXT, make_hf_folder
from tests.worker.test_job import _job, _submit, settings  # noqa: F401 - fixture


@pytest.fixture
def hf(tmp_path):
    pytest.importorskip("transformers", reason="hf: sources need the 'hf' extra")
    make_hf_folder(tmp_path / "tiny")
    (tmp_path / "calib.txt").write_text(CALIBRATION_TEXT)
    (tmp_path / "eval.txt").write_text(CALIBRATION_TEXT * 2)
    return tmp_path


@pytest.mark.slow
def test_dynamic_smoothquant_job_records_perplexity_columns(settings, hf):  # noqa: F811
    (job_id,) = _submit(settings, [{
        "name": "a", "model": f"hf:{hf / 'tiny'}", "mode": "dynamic", "smoothquant": 0.5,
        "calibration": f"text:{hf / 'calib.txt'}", "exclude": ["lm_head"],
        "evaluation": f"text:{hf / 'eval.txt'}?context=48",
    }])
    out = run_job(job_id, "w@test", settings=settings)
    assert out.status == "succeeded", _job(settings, job_id).last_error
    with Catalog(settings.catalog_url).begin() as session:
        a = session.scalars(select(Artifact)).one()
        m = a.info["metrics"]
        assert (a.mode, a.smoothquant_alpha, a.weight_algorithm) == ("dynamic", 0.5, "rtn")
        assert (a.perplexity_fp, a.perplexity_quant) == (m["perplexity_fp"],
                                                         m["perplexity_quant"])
        assert a.perplexity_increase == pytest.approx(a.perplexity_quant - a.perplexity_fp)
        assert m["perplexity_context"] == 48 and a.layers_excluded_for_accuracy == 0


def test_unmeetable_target_fails_as_bad_config(settings):  # noqa: F811
    (job_id,) = _submit(settings, [{
        "name": "a", "model": "factory:tests.jobfixtures:tiny", "mode": "static",
        "calibration": "factory:mono_quant.demo_models:vector_batches?n=2&features=64",
        "target": {"output_sqnr_db": 400},
    }])
    out = run_job(job_id, "w@test", settings=settings)
    assert out.status == "failed" and out.retry_in is None
    job = _job(settings, job_id)
    assert job.error_kind is ErrorKind.BAD_CONFIG
    assert "target: output_sqnr_db >= 400 cannot be met: the best achieved" in job.last_error
