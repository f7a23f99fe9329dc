"""``ncti evaluate`` refuses bad input clearly and never silently gives a wrong answer.

Every CLI error is one line on stderr (``ncti evaluate: error: ...``, no traceback) with
exit code 2, naming the file and the model (and the CSV line) at fault.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ncti_jax import cli, io, ranking

MODELS = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"]
ACC = [90.0, 88.5, 86.0, 83.0, 80.0, 77.5, 71.0, 60.0]  # best first, like the scores below


def scores_doc(models=MODELS, values=None):
    values = list(range(len(models), 0, -1)) if values is None else values
    records = [
        {"model": m, "rank": i + 1, "ncti": float(v), "status": []}
        for i, (m, v) in enumerate(zip(models, values, strict=True))
    ]
    return {"schema": "ncti-jax/scores/v2", "models": records}  # v2: still read


def write_scores(tmp_path, doc=None, name="scores.json"):
    path = tmp_path / name
    path.write_text(json.dumps(scores_doc() if doc is None else doc))
    return path


def write_truth_csv(tmp_path, lines, name="truth.csv", encoding="utf-8"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding=encoding)
    return path


def plain_truth_lines(models=MODELS, acc=ACC):
    return ["model,accuracy", *(f"{m},{a}" for m, a in zip(models, acc, strict=True))]


def run(capsys, *args):
    rc = cli.main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err.splitlines()


def one_line_error(capsys, *args):
    """Runs a failing evaluate; returns its single stderr line."""
    rc, out, err = run(capsys, *args)
    assert rc == 2, (out, err)
    assert len(err) == 1, err
    assert err[0].startswith("ncti evaluate: error: ")
    assert "Traceback" not in err[0]
    return err[0]


def wtau(out):
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("weighted_tau"))
    return float(line.split()[1])


def warnings_of(err):
    return [line for line in err if line.startswith("warning: ")]


# ---- 1. duplicate models --------------------------------------------------------------------


def test_duplicate_rows_in_truth_csv(tmp_path, capsys):
    scores = write_scores(tmp_path)
    # m0 first says 90 (matches the scores: wtau 1), then again 10: the last used to win.
    truth = write_truth_csv(tmp_path, [*plain_truth_lines(), "m0,10"])
    err = one_line_error(capsys, scores, "--truth", truth)
    assert str(truth) in err and "'m0'" in err and "listed twice" in err
    assert "line 2" in err and "line 10" in err


@pytest.mark.parametrize("wrapped", [False, True])
def test_duplicate_keys_in_truth_json(tmp_path, capsys, wrapped):
    scores = write_scores(tmp_path)
    body = ", ".join(f'"{m}": {a}' for m, a in zip(MODELS, ACC, strict=True)) + ', "m3": 99'
    text = f'{{"accuracy": {{{body}}}}}' if wrapped else f"{{{body}}}"
    truth = tmp_path / "truth.json"
    truth.write_text(text)
    err = one_line_error(capsys, scores, "--truth", truth)
    assert str(truth) in err and "'m3'" in err and "more than once" in err


def test_duplicate_keys_in_scores_json(tmp_path, capsys):
    truth = write_truth_csv(tmp_path, plain_truth_lines())
    scores = tmp_path / "published.json"
    body = ", ".join(f'"{m}": {8 - i}' for i, m in enumerate(MODELS))
    scores.write_text(f'{{"ncti": {{{body}, "m0": -5}}}}')
    err = one_line_error(capsys, scores, "--truth", truth)
    assert str(scores) in err and "'m0'" in err and "more than once" in err


def test_duplicate_records_in_ncti_jax_scores(tmp_path, capsys):
    truth = write_truth_csv(tmp_path, plain_truth_lines())
    doc = scores_doc()
    doc["models"].append({"model": "m0", "rank": 9, "ncti": -1.0, "status": []})
    scores = write_scores(tmp_path, doc)
    err = one_line_error(capsys, scores, "--truth", truth)
    assert str(scores) in err and "'m0'" in err and "listed twice" in err
    assert "record 0" in err and "record 8" in err


def test_duplicate_rows_in_scores_csv(tmp_path, capsys):
    truth = write_truth_csv(tmp_path, plain_truth_lines())
    scores = write_truth_csv(
        tmp_path,
        ["model,ncti", *(f"{m},{8 - i}" for i, m in enumerate(MODELS)), "m5,100"],
        name="scores.csv",
    )
    err = one_line_error(capsys, scores, "--truth", truth)
    assert str(scores) in err and "'m5'" in err and "line 10" in err


# ---- 2. truth CSV robustness ----------------------------------------------------------------


def test_truth_csv_bom_header_case_and_percent(tmp_path, capsys):
    scores = write_scores(tmp_path)
    plain = write_truth_csv(tmp_path, plain_truth_lines(), name="plain.csv")
    rc, plain_out, _ = run(capsys, scores, "--truth", plain)
    assert rc == 0
    cells = [f"{a:g}%" if i % 2 else f" {a} % " for i, a in enumerate(ACC)]
    lines = ["Model , ACCURACY", *(f"{m},{c}" for m, c in zip(MODELS, cells, strict=True))]
    fancy = write_truth_csv(tmp_path, lines, name="fancy.csv", encoding="utf-8-sig")
    assert fancy.read_bytes().startswith(b"\xef\xbb\xbf")
    rc, out, err = run(capsys, scores, "--truth", fancy)
    assert rc == 0, err
    assert wtau(out) == 1.0
    # 91% is 91, the same scale as a plain 91: every metric is the same as with plain values.
    assert out.splitlines()[1:] == plain_out.splitlines()[1:]
    assert io.read_truth(fancy) == dict(zip(MODELS, ACC, strict=True))


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity", "ninety", "", "NaN %", "%"])
def test_truth_csv_bad_values_name_file_line_and_model(tmp_path, capsys, bad):
    scores = write_scores(tmp_path)
    lines = plain_truth_lines()
    lines[3] = f"m2,{bad}"  # file line 4
    truth = write_truth_csv(tmp_path, lines)
    err = one_line_error(capsys, scores, "--truth", truth)
    assert str(truth) in err and "line 4" in err and "'m2'" in err
    assert "not a finite number" in err


def test_truth_csv_missing_column_is_named(tmp_path, capsys):
    scores = write_scores(tmp_path)
    truth = write_truth_csv(tmp_path, ["model,acc", "m0,1"])
    err = one_line_error(capsys, scores, "--truth", truth)
    assert str(truth) in err and "no 'accuracy' column" in err and "'acc'" in err


def test_truth_json_forms_still_work_and_take_percent(tmp_path, capsys):
    scores = write_scores(tmp_path)
    mapping = {
        m: (f"{a} %" if i % 3 == 0 else str(a) if i % 3 == 1 else a)
        for i, (m, a) in enumerate(zip(MODELS, ACC, strict=True))
    }
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text("\ufeff" + json.dumps({"description": "x", "accuracy": mapping}))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(mapping))
    for path in (wrapped, plain):
        assert io.read_truth(path) == dict(zip(MODELS, ACC, strict=True))
    rc, out, err = run(capsys, scores, "--truth", wrapped)
    assert rc == 0, err
    assert wtau(out) == 1.0


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "null", "true", '"ninety"', "[1]"])
def test_truth_json_bad_values_name_file_and_model(tmp_path, capsys, bad):
    scores = write_scores(tmp_path)
    body = ", ".join(f'"{m}": {a}' for m, a in zip(MODELS[:-1], ACC, strict=False))
    truth = tmp_path / "truth.json"
    truth.write_text(f'{{{body}, "{MODELS[-1]}": {bad}}}')
    err = one_line_error(capsys, scores, "--truth", truth)
    assert str(truth) in err and f"'{MODELS[-1]}'" in err and "not a finite number" in err


# ---- 3. records without an ncti score -------------------------------------------------------


def test_record_without_ncti_is_an_error(tmp_path, capsys):
    truth = write_truth_csv(tmp_path, plain_truth_lines())
    doc = scores_doc()
    del doc["models"][2]["ncti"]
    scores = write_scores(tmp_path, doc)
    err = one_line_error(capsys, scores, "--truth", truth)
    assert str(scores) in err and "'m2'" in err and "no 'ncti'" in err


@pytest.mark.parametrize("bad", ["high", True, [1.0], float("nan"), float("inf")])
def test_record_with_non_number_ncti_is_an_error(tmp_path, capsys, bad):
    truth = write_truth_csv(tmp_path, plain_truth_lines())
    doc = scores_doc()
    doc["models"][4]["ncti"] = bad
    scores = write_scores(tmp_path, doc)
    err = one_line_error(capsys, scores, "--truth", truth)
    assert str(scores) in err and "'m4'" in err and "not a finite number" in err


def test_null_ncti_is_an_unranked_model_left_out_with_a_message(tmp_path, capsys):
    truth = write_truth_csv(tmp_path, plain_truth_lines())
    doc = scores_doc()
    doc["models"][0]["ncti"] = None  # the engine could not score m0
    scores = write_scores(tmp_path, doc)
    rc, out, err = run(capsys, scores, "--truth", truth)
    assert rc == 0, err
    assert out.splitlines()[0].startswith("7 models")
    unranked = [w for w in warnings_of(err) if "without an NCTI score (unranked)" in w]
    assert len(unranked) == 1 and str(scores) in unranked[0] and "['m0']" in unranked[0]
    # An empty ncti cell in a scores CSV means the same.
    csv_scores = write_truth_csv(
        tmp_path,
        ["model,ncti", "m0,", *(f"{m},{8 - i}" for i, m in enumerate(MODELS[1:]))],
        name="scores.csv",
    )
    assert io.read_scores(csv_scores) == {m: 8.0 - i for i, m in enumerate(MODELS[1:])}


# ---- 4. models on one side only -------------------------------------------------------------


def test_truth_with_more_models_evaluates_the_intersection(tmp_path, capsys):
    truth = write_truth_csv(tmp_path, [*plain_truth_lines(), "extra1,50", "extra2,40"])
    scores = write_scores(tmp_path)
    rc, out, err = run(capsys, scores, "--truth", truth)
    assert rc == 0, err
    assert out.splitlines()[0].startswith("8 models") and wtau(out) == 1.0
    left = [w for w in warnings_of(err) if "left out" in w]
    assert len(left) == 1 and "['extra1', 'extra2']" in left[0] and str(truth) in left[0]


def test_results_with_more_models_leave_them_out_with_a_message(tmp_path, capsys):
    truth = write_truth_csv(tmp_path, plain_truth_lines())
    scores = write_scores(tmp_path, scores_doc([*MODELS, "new"], list(range(9, 0, -1))))
    rc, out, err = run(capsys, scores, "--truth", truth)
    assert rc == 0, err
    assert out.splitlines()[0].startswith("8 models") and wtau(out) == 1.0
    left = [w for w in warnings_of(err) if "left out" in w]
    assert len(left) == 1 and "['new']" in left[0] and str(truth) in left[0]


def test_published_truth_for_a_subset_says_which_models_are_left_out(tmp_path, capsys):
    acc = ranking.published_truth("group1:cifar10")
    chosen = sorted(acc)[:9]
    scores = tmp_path / "s.json"
    scores.write_text(json.dumps({m: acc[m] for m in chosen}))
    rc, _, err = run(capsys, scores, "--truth", "group1:cifar10")
    assert rc == 0, err
    left = [w for w in warnings_of(err) if "left out" in w]
    assert len(left) == 1 and str(sorted(acc)[9:]) in left[0]


def test_fewer_than_three_common_models_is_an_error_naming_both(tmp_path, capsys):
    truth = write_truth_csv(tmp_path, ["model,accuracy", "m0,90", "m1,80", "other,70"])
    scores = write_scores(tmp_path)
    err = one_line_error(capsys, scores, "--truth", truth)
    assert str(scores) in err and str(truth) in err and "only 2 model(s) in common" in err


# ---- 5. --out evaluate.json / evaluate.csv -------------------------------------------------


def _no_constants(token):
    raise AssertionError(f"evaluate.json holds {token}: not strict JSON")


def test_out_writes_the_printed_metrics(tmp_path, capsys):
    truth = write_truth_csv(tmp_path, plain_truth_lines())
    values = [8, 6, 7, 5, 4, 1, 3, 2]
    scores = write_scores(tmp_path, scores_doc(MODELS, values))
    out = tmp_path / "eval"
    rc, printed, err = run(capsys, scores, "--truth", truth, "--out", out, "--bootstrap", 200)
    assert rc == 0, err
    doc = json.loads((out / "evaluate.json").read_text(), parse_constant=_no_constants)
    want = ranking.evaluate(values, ACC, n_resamples=200, seed=0)
    assert doc["metrics"] == pytest.approx(want)
    assert doc["n_models"] == 8 and doc["models"] == MODELS and doc["truth"] == str(truth)
    assert doc["bootstrap"] == {"n_resamples": 200, "seed": 0, "confidence": 0.95}
    for line in printed.splitlines()[1:]:
        key, value = line.split()[:2]
        assert f"{doc['metrics'][key]:.3f}" == value
    assert f"{doc['metrics']['weighted_tau_ci_low']:.3f} .. " in printed
    with open(out / "evaluate.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    for key, value in want.items():
        assert float(row[key]) == pytest.approx(value)
    assert row["n_models"] == "8" and row["n_resamples"] == "200"
    assert sorted(p.name for p in out.iterdir()) == ["evaluate.csv", "evaluate.json"]


def test_out_writes_null_for_undefined_metrics(tmp_path, capsys):
    truth = write_truth_csv(tmp_path, ["model,accuracy", *(f"{m},80" for m in MODELS)])
    scores = write_scores(tmp_path)
    out = tmp_path / "eval"
    rc, _, err = run(capsys, scores, "--truth", truth, "--out", out, "--bootstrap", 50)
    assert rc == 0, err
    doc = json.loads((out / "evaluate.json").read_text(), parse_constant=_no_constants)
    assert doc["metrics"]["weighted_tau"] is None and doc["metrics"]["kendall_tau"] is None
    assert doc["metrics"]["top1_rel_acc"] == 1.0
    with open(out / "evaluate.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["weighted_tau"] == "" and float(row["top1_rel_acc"]) == 1.0


def test_out_is_not_written_when_evaluation_fails(tmp_path, capsys):
    truth = write_truth_csv(tmp_path, [*plain_truth_lines(), "m0,10"])
    out = tmp_path / "eval"
    one_line_error(capsys, write_scores(tmp_path), "--truth", truth, "--out", out)
    assert not out.exists()


def test_out_with_all_writes_one_row_per_dataset_and_the_mean(tmp_path, capsys):
    tables = ranking.finetune_accuracy()["group1"]
    root = tmp_path / "runs"
    for dataset in ("cifar10", "dtd"):
        acc = tables[dataset]
        (root / dataset).mkdir(parents=True)
        doc = scores_doc(list(acc), [a + (i % 3) for i, a in enumerate(acc.values())])
        (root / dataset / "scores.json").write_text(json.dumps(doc))
    out = tmp_path / "eval"
    rc, printed, err = run(capsys, root, "--all", "--truth", "group1", "--out", out)
    assert rc == 0, err
    doc = json.loads((out / "evaluate.json").read_text(), parse_constant=_no_constants)
    assert [d["dataset"] for d in doc["datasets"]] == ["cifar10", "dtd"]
    lines = printed.splitlines()
    for line, d in zip(lines[1:3], doc["datasets"], strict=True):
        assert line.split()[1] == f"{d['metrics']['weighted_tau']:.3f}"
    assert lines[3].split()[1] == f"{doc['mean']['weighted_tau']:.3f}"
    with open(out / "evaluate.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["dataset"] for r in rows] == ["cifar10", "dtd", "mean"]
    assert float(rows[2]["weighted_tau"]) == pytest.approx(doc["mean"]["weighted_tau"])


# ---- 6. small zoos and the bootstrap interval -----------------------------------------------


def share_degenerate(m, rng, n=200_000):
    """Share of bootstrap resamples of m models that hold at most 3 distinct models."""
    idx = np.sort(rng.integers(0, m, size=(n, m)), axis=1)
    distinct = (idx[:, 1:] != idx[:, :-1]).sum(axis=1) + 1
    return float((distinct <= 3).mean())


def test_small_zoo_warns_that_the_interval_means_little(tmp_path, capsys):
    # The threshold the warning states: below 8 models over 2.5% of resamples (one tail
    # of the 95% interval) hold at most 3 distinct models; from 8 on fewer do.
    rng = np.random.default_rng(0)
    assert share_degenerate(7, rng) > 0.025 > share_degenerate(8, rng)
    truth = write_truth_csv(tmp_path, plain_truth_lines())
    scores = write_scores(tmp_path, scores_doc(MODELS[:7], list(range(7, 0, -1))))
    rc, _, err = run(capsys, scores, "--truth", truth)
    assert rc == 0, err
    small = [w for w in warnings_of(err) if "bootstrap interval" in w]
    assert len(small) == 1 and "only 7 models" in small[0] and "below 8 models" in small[0]
    # 8 models: no such warning.
    scores = write_scores(tmp_path, scores_doc(), name="all.json")
    rc, _, err = run(capsys, scores, "--truth", truth)
    assert rc == 0 and not [w for w in warnings_of(err) if "bootstrap interval" in w]


def test_plot_aligns_truth_as_evaluate_does(tmp_path, capsys):
    """``ncti plot --truth`` takes the models both sides know, as ``ncti evaluate`` does,
    and names the ones it leaves out (it used to refuse any difference)."""
    pytest.importorskip("matplotlib")
    scores = write_scores(tmp_path, scores_doc(MODELS[:6]))
    truth = write_truth_csv(tmp_path, plain_truth_lines(MODELS[1:], ACC[1:]))
    rc = cli.main(["plot", str(scores), "--truth", str(truth), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (tmp_path / "p" / "ncti_vs_truth.png").read_bytes()[:4] == b"\x89PNG"
    assert "['m0']" in err and "['m6', 'm7']" in err  # no accuracy; no score
    too_few = write_truth_csv(tmp_path, plain_truth_lines(MODELS[5:], ACC[5:]), name="few.csv")
    assert cli.main(["plot", str(scores), "--truth", str(too_few)]) == 2
    assert "only 1 model(s) in common" in capsys.readouterr().err
