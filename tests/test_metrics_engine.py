"""score_metrics: every metric through one engine, against the per-model references.

The metrics' own parity tests (tests/test_metric_*.py) check each kernel on every
input regime; these check the driver around them: batching and padding of a ragged
zoo, calls split by the memory plan, several devices, checkpoints, errors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from metric_parity import reference_values, rel_err

import ncti_jax
import ncti_jax._validate
from ncti_jax import metrics

from zoos import labels, model_features

# Every implemented metric but NCTI (which has its own tests).
OTHERS = tuple(m for m in metrics.available() if m != "ncti")
PER_MODEL = tuple(m for m in OTHERS if metrics.get(m).combine is None)


def zoo_with_logits(rng: np.random.Generator):
    """Five models of different widths and source classes, N = 240, C = 4."""
    y = labels(rng, 240, 4)
    feats, logits = {}, {}
    for i, (d, s) in enumerate([(24, 5), (40, 30), (16, 3), (40, 12), (32, 7)]):
        x = model_features(rng, y, d, collapse=0.03 * (i + 1))
        feats[f"m{i}"] = x
        head = rng.normal(size=(d, s)) / np.sqrt(d)
        logits[f"m{i}"] = (x @ head + 0.1 * rng.normal(size=(240, s))).astype(np.float32)
    return feats, y, logits


@pytest.fixture
def zoo(rng):
    return zoo_with_logits(rng)


def score(feats, y, logits, names, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ncti_jax.score_metrics(feats, y, metrics=names, logits=logits, **kw)


def test_every_metric_matches_its_reference(zoo, x64):
    feats, y, logits = zoo
    result = score(feats, y, logits, "all", dtype=np.float64)
    assert result.metrics[0] == "ncti" and set(OTHERS) <= set(result.metrics)
    for name in PER_MODEL:
        want = reference_values(name, feats, y, logits if metrics.get(name).needs_logits else None)
        got = result[name].values
        assert rel_err(got, want) < 1e-6, (name, got, want)
        assert np.array_equal(result[name].ranking, np.argsort(-want, kind="stable")) or (
            np.unique(np.round(want, 8)).size < want.size  # ties may order either way
        )
    plain = ncti_jax.score_zoo(feats, y, dtype=np.float64)
    np.testing.assert_array_equal(result.ncti.ncti, plain.ncti)
    np.testing.assert_array_equal(result["ncti"].values, plain.ncti)


# A metric of each kind for the driver's tests: one per model, one that reads the logits,
# a zoo-level one, one computed in float64 whatever the run's dtype.
KINDS = ("hscore_shrinkage", "leep", "etran", "nleep")


def test_calls_split_by_memory_limit_give_the_same_values(zoo, x64):
    feats, y, logits = zoo
    whole = score(feats, y, logits, KINDS, dtype=np.float64)
    # Room for one model per call: five calls, the last ones padded with dummies. (In
    # float64: float32 calls of other batch sizes differ by rounding, 2e-5 seen.)
    one = score(feats, y, logits, KINDS, dtype=np.float64, memory_limit=3_000_000)
    for name in KINDS:
        np.testing.assert_allclose(one[name].values, whole[name].values, rtol=1e-10)


def test_model_that_does_not_fit_is_named(zoo):
    feats, y, logits = zoo
    with pytest.raises(MemoryError, match=r"model 'm1' \(N = 240, D = 40\)"):
        score(feats, y, logits, "hscore", memory_limit=10_000)


def test_checkpoint_resumes_and_refuses_other_metrics(zoo, tmp_path):
    feats, y, logits = zoo
    first = score(feats, y, logits, KINDS, checkpoint=tmp_path, memory_limit=3_000_000)
    again = score(feats, y, logits, KINDS, checkpoint=tmp_path)
    for name in KINDS:
        np.testing.assert_array_equal(again[name].values, first[name].values)
    with pytest.raises(ncti_jax.CheckpointError, match="different run"):
        score(feats, y, logits, KINDS[:1], checkpoint=tmp_path)


def test_constant_features_get_the_references_value(rng):
    y = labels(rng, 200, 3)
    feats = {"good": model_features(rng, y, 16, 0.1), "constant": np.ones((200, 16), np.float32)}
    result = ncti_jax.score_metrics(feats, y, metrics="hscore")["hscore"]
    # float32 against the float64 reference (see test_metric_hscore for the tolerances).
    np.testing.assert_allclose(result.values, reference_values("hscore", feats, y), rtol=1e-4)
    assert result.best() == "good"


def test_undefined_value_is_unranked_and_flagged(rng):
    """A kernel's NaN leaves the model unranked, flagged and named in a warning."""
    lab = ncti_jax._validate.check_labels(labels(rng, 50, 2))
    raw = {"value": np.array([0.5, np.nan, 2.0])}
    with pytest.warns(UserWarning, match=r"hscore: 1 model unranked.*'b'"):
        r = ncti_jax.MetricResult.from_fields(metrics.get("hscore"), "abc", raw, lab)
    assert r.ranks().tolist() == [2, 0, 1] and r.best() == "c"
    assert r.status[1] & ncti_jax.Status.NON_FINITE and not r.status[0]
    assert [rec["hscore"] for rec in r.to_records()] == [2.0, 0.5, None]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metrics": "ncti,logmee"}, r"'logmee'; choose from ncti, "),
        ({"metrics": ""}, "none given"),
    ],
)
def test_bad_metric_names(zoo, kwargs, match):
    feats, y, _ = zoo
    with pytest.raises(ValueError, match=match):
        ncti_jax.score_metrics(feats, y, **kwargs)


def test_logits_checked_before_scoring(zoo):
    feats, y, logits = zoo
    needs = [m for m in OTHERS if metrics.get(m).needs_logits]
    if not needs:
        pytest.skip("no metric that reads logits is implemented")
    with pytest.raises(ValueError, match="need the source classifier's logits"):
        ncti_jax.score_metrics(feats, y, metrics=needs[0])
    partial = {m: a for m, a in logits.items() if m != "m3"}
    with pytest.raises(ValueError, match=r"none for model\(s\) \['m3'\]"):
        ncti_jax.score_metrics(feats, y, metrics=needs[0], logits=partial)
    bad = {**logits, "m2": logits["m2"][:10]}
    with pytest.raises(ValueError, match=r"logits of model 'm2' have shape \(10, 3\)"):
        ncti_jax.score_metrics(feats, y, metrics=needs[0], logits=bad)


def test_four_forced_cpu_devices_agree_with_one(seed):
    names = ",".join(OTHERS)
    env = dict(os.environ, NCTI_TEST_SEED=str(seed))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("metrics_worker.py")), "4", names],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    feats, y, logits = zoo_with_logits(np.random.default_rng(seed))
    want = score(feats, y, logits, names)
    for name in OTHERS:
        np.testing.assert_allclose(got[name], want[name].values, rtol=1e-5, atol=1e-7)


def test_parc_scores_the_references_sample_through_the_driver(rng, monkeypatch, x64):
    """Above PARC's sample cap the driver scores the reference's stratified sample of rows
    (drawn once from the labels), while the other metrics of the call see every row."""
    import dataclasses

    from ncti_jax.metrics import parc as parc_kernel
    from ncti_jax.reference import parc as parc_ref

    (metric,) = parc_kernel.METRICS
    capped = dataclasses.replace(
        metric, sample=lambda codes: parc_kernel.sample_rows(codes, max_samples=150)
    )
    monkeypatch.setattr(parc_kernel, "METRICS", (capped,))
    feats, y, _ = zoo_with_logits(rng)
    result = score(feats, y, None, "parc,hscore", dtype=np.float64)
    want = [parc_ref.parc(np.float64(x), y, max_samples=150) for x in feats.values()]
    np.testing.assert_allclose(result["parc"].values, want, rtol=1e-9, atol=1e-9)
    assert rel_err(result["hscore"].values, reference_values("hscore", feats, y)) < 1e-9
    full = [parc_ref.parc(np.float64(x), y) for x in feats.values()]
    assert not np.allclose(full, want, rtol=1e-6)  # the sample is not all the rows
