"""Feature stores in, results out.

Feature stores (read with ``allow_pickle=False``, ``.npy`` files memory-mapped):

- **directory layout**: ``<model>.npy`` (or ``<model>.npz`` holding one array,
  or an array named ``features``) per model, plus ``labels.npy``; optionally
  ``logits/<model>.npy``, the (N, S) float32 logits of the model's own source
  classifier on the same rows (``ncti extract --with-logits``; LEEP, NCE and
  ETran's energy score read them with :func:`load_logits`), in a subdirectory so
  that they are not taken for models;
- **authors' layout**: ``<model>_<dataset>_feature.npy`` and
  ``<model>_<dataset>_label.npy`` per model, selected with ``dataset``.

Results: :func:`write_results` writes ``scores.json`` and ``scores.csv``
atomically (a temporary file in the same directory, then a rename), so a crash
never leaves a half-written file and an earlier result is replaced only by a
complete one. The JSON schema (``"schema": "ncti-jax/scores/v3"``) has one block
of records per metric scored::

    {
      "schema": "ncti-jax/scores/v3",
      "created": ISO 8601 time (UTC),
      "settings": {"metrics", "n_components", "precision", "dtype", "strategy",
                   "dataset", "source", "n_samples", "n_classes", "n_models"},
      "versions": {"ncti_jax", "jax", "jaxlib", "numpy", "scipy", "python", "backend"},
      "metrics": ["ncti", "logme", ...],
      "results": {
        "ncti": [ one record per model, best first:
          {"model", "rank", "ncti", "etf", "ncc", "vc", "etf_norm", "ncc_norm",
           "vc_norm", "solver", "shrinkage", "pca_rank", "status"} ],
        "<metric>": [ {"model", "rank", "<metric>" (the value), its raw fields,
                       "status"}, best first ]
      }
    }

``rank`` and values are ``null`` for a model the metric could not rank. (v1 and v2,
read too, hold NCTI alone: its records under ``"models"``; v1 named ``pca_rank``
``n_components``.)

The CSV has one row per model, in the first metric's order: ``model``, then per
metric its value and ``<metric>_rank``, NCTI's components and settings when NCTI
was scored, the other metrics' raw fields as ``<metric>_<field>``, and ``status``
(``metric:FLAG`` entries joined by ``|``).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import hashlib
import io
import json
import os
import platform
import re
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

SCHEMA = "ncti-jax/scores/v3"
# Schemas read_results and read_scores accept: this one and the ones before it (NCTI only).
READABLE_SCHEMAS = (SCHEMA, "ncti-jax/scores/v2", "ncti-jax/scores/v1")
LABELS_FILE = "labels.npy"
LOGITS_DIR = "logits"  # directory layout: logits/<model>.npy, a model's source logits
_AUTHORS = re.compile(r"^(?P<model>.+)_(?P<dataset>[^_]+)_(?P<kind>feature|label)\.npy$")
# NCTI's record fields beyond model, rank, value and status (the CSV's NCTI columns).
NCTI_FIELDS = (
    "etf",
    "ncc",
    "vc",
    "etf_norm",
    "ncc_norm",
    "vc_norm",
    "solver",
    "shrinkage",
    "pca_rank",
)


class FeatureStoreError(ValueError):
    """A feature store that cannot be read: names the file or directory at fault."""


def load_array(path: str | os.PathLike, *, mmap: bool = True) -> np.ndarray:
    """Loads one ``.npy`` (memory-mapped) or single-array ``.npz`` file safely."""
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if "features" in keys:
                    return archive["features"]
                if len(keys) != 1:
                    raise FeatureStoreError(
                        f"{path}: an .npz feature file must hold one array or one named "
                        f"'features'; it holds {keys}."
                    )
                return archive[keys[0]]
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FeatureStoreError:
        raise
    except FileNotFoundError:
        raise FeatureStoreError(f"{path}: no such file.") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise FeatureStoreError(f"{path}: not a readable NumPy array file ({err}).") from None


def list_datasets(path: str | os.PathLike) -> list[str]:
    """Datasets present in an authors'-layout directory."""
    found = set()
    for f in Path(path).iterdir():
        m = _AUTHORS.match(f.name)
        if m:
            found.add(m.group("dataset"))
    return sorted(found)


def load_feature_store(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    models: Sequence[str] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Reads a feature store: ``({model: (N, D) array}, labels)``.

    Args:
      path: the store's directory.
      dataset: the dataset of an authors'-layout store (needed when it holds several).
      models: restrict to these models (default: all, sorted by name).

    Raises:
      FeatureStoreError: naming the file or directory that is missing, corrupt or
        inconsistent.
    """
    root = Path(path)
    if not root.is_dir():
        raise FeatureStoreError(f"{root}: not a directory (expected a feature store).")
    if dataset is None and (root / LABELS_FILE).exists():
        feats, labels = _load_directory_layout(root)
    else:
        feats, labels = _load_authors_layout(root, dataset)
    if models is not None:
        missing = [m for m in models if m not in feats]
        if missing:
            raise FeatureStoreError(
                f"{root}: no features for model(s) {missing}; available: {sorted(feats)}."
            )
        feats = {m: feats[m] for m in models}
    for name, x in feats.items():
        if x.ndim != 2 or x.shape[0] != labels.shape[0]:
            raise FeatureStoreError(
                f"{root}: features of model {name!r} have shape {x.shape}, expected "
                f"({labels.shape[0]}, D) to match the labels."
            )
    return feats, labels


def load_logits(path: str | os.PathLike, models: Sequence[str]) -> dict[str, np.ndarray]:
    """Reads the source logits of ``models`` from a directory-layout feature store.

    Args:
      path: the store's directory (``labels.npy``, ``logits/<model>.npy``).
      models: the models whose logits are wanted.

    Returns:
      ``{model: (N, S) array}`` in the order of ``models``, memory-mapped, rows
      matching the store's labels.

    Raises:
      FeatureStoreError: naming the store and every model without logits (in one
        message), or the logits file of the wrong shape.
    """
    root = Path(path)
    if not root.is_dir():
        raise FeatureStoreError(f"{root}: not a directory (expected a feature store).")
    if isinstance(models, str):
        models = [models]
    bad = [m for m in models if not isinstance(m, str) or m in ("", ".", "..") or "/" in m]
    if bad:
        raise FeatureStoreError(f"{root}: {bad} are not model names.")
    if not (root / LABELS_FILE).exists():
        raise FeatureStoreError(
            f"{root}: no {LABELS_FILE}; source logits are read from a directory-layout "
            "store (ncti extract --with-logits)."
        )
    labels = load_array(root / LABELS_FILE)
    folder = root / LOGITS_DIR
    missing = [m for m in models if not (folder / f"{m}.npy").is_file()]
    if missing:
        raise FeatureStoreError(
            f"{root}: no source logits ({LOGITS_DIR}/<model>.npy) for "
            f"{len(missing)} model(s) {missing}; re-extract them with "
            "'ncti extract --with-logits'."
        )
    logits: dict[str, np.ndarray] = {}
    for m in models:
        f = folder / f"{m}.npy"
        x = load_array(f)
        if x.ndim != 2 or x.shape[0] != labels.shape[0]:
            raise FeatureStoreError(
                f"{f}: logits of model {m!r} have shape {x.shape}, expected "
                f"({labels.shape[0]}, S) to match the labels."
            )
        logits[m] = x
    return logits


def _load_directory_layout(root: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    labels = load_array(root / LABELS_FILE, mmap=False)
    if labels.ndim not in (1, 2):
        raise FeatureStoreError(
            f"{root / LABELS_FILE}: labels must have shape (N,) or (N, 1); got {labels.shape}."
        )
    candidates = [
        f for f in root.iterdir() if f.suffix in (".npy", ".npz") and f.name != LABELS_FILE
    ]
    dangling = sorted(f.name for f in candidates if f.is_symlink() and not f.exists())
    if dangling:
        raise FeatureStoreError(f"{root}: {dangling} are symbolic links to missing files.")
    files = sorted(f for f in candidates if f.is_file())
    if not files:
        raise FeatureStoreError(f"{root}: holds {LABELS_FILE} but no <model>.npy feature files.")
    feats: dict[str, np.ndarray] = {}
    for f in files:
        if f.stem in feats:
            raise FeatureStoreError(f"{root}: model {f.stem!r} has both a .npy and a .npz file.")
        feats[f.stem] = load_array(f)
    return feats, labels


def _load_authors_layout(
    root: Path, dataset: str | None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    datasets = list_datasets(root)
    if not datasets:
        raise FeatureStoreError(
            f"{root}: no feature store found: expected {LABELS_FILE} with <model>.npy files, "
            "or <model>_<dataset>_feature.npy with <model>_<dataset>_label.npy."
        )
    if dataset is None:
        if len(datasets) > 1:
            raise FeatureStoreError(
                f"{root}: holds several datasets {datasets}; choose one with --dataset."
            )
        dataset = datasets[0]
    elif dataset not in datasets:
        raise FeatureStoreError(f"{root}: no files for dataset {dataset!r}; found {datasets}.")
    feats: dict[str, np.ndarray] = {}
    labels, labels_file = None, None
    for f in sorted(root.iterdir()):
        m = _AUTHORS.match(f.name)
        if not m or m.group("dataset") != dataset or m.group("kind") != "feature":
            continue
        model = m.group("model")
        label_path = root / f"{model}_{dataset}_label.npy"
        if not label_path.exists():
            raise FeatureStoreError(f"{f}: no matching label file {label_path.name}.")
        y = np.asarray(load_array(label_path, mmap=False)).reshape(-1)
        if labels is None:
            labels, labels_file = y, label_path
        elif y.shape != labels.shape or not np.array_equal(y, labels):
            raise FeatureStoreError(
                f"{label_path}: labels differ from {labels_file.name}; every model must be "
                "extracted on the same samples in the same order."
            )
        feats[model] = load_array(f)
    if labels is None:
        raise FeatureStoreError(f"{root}: no <model>_{dataset}_feature.npy files.")
    return feats, labels


def versions() -> dict[str, str]:
    """Versions of the libraries a result depends on."""
    import jax
    import jaxlib
    import scipy

    from . import __version__

    return {
        "ncti_jax": __version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
    }


def results_document(
    results: dict[str, list[dict[str, Any]]], settings: dict[str, Any]
) -> dict[str, Any]:
    """The JSON document of :data:`SCHEMA`: ``results`` is ``{metric: records, best
    first}`` (:meth:`ncti_jax.MetricResult.to_records`; NCTI's from
    :meth:`ncti_jax.NCTIResult.to_records`)."""
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {"metrics": list(results), **settings},
        "versions": versions(),
        "metrics": list(results),
        "results": results,
    }


def document_metrics(doc: dict[str, Any]) -> list[str]:
    """The metrics a results document holds (``["ncti"]`` for v1 and v2)."""
    if doc.get("schema") != SCHEMA:
        return ["ncti"]
    metrics, results = doc.get("metrics"), doc.get("results")
    if (
        not isinstance(metrics, list)
        or not isinstance(results, dict)
        or set(metrics) - set(results)
    ):
        raise ValueError(
            f"a {SCHEMA} file needs 'metrics' (a list) and 'results' with a block for each."
        )
    return list(metrics)


def metric_records(doc: dict[str, Any], metric: str = "ncti") -> list[dict[str, Any]]:
    """One metric's records (best first) from a results document of any readable schema.

    Raises:
      ValueError: the document holds no results for ``metric`` (naming those it holds).
    """
    held = document_metrics(doc)
    if metric not in held:
        raise ValueError(f"no {metric!r} results in this file; it holds {held}.")
    records = doc["results"].get(metric) if doc.get("schema") == SCHEMA else doc.get("models")
    if not isinstance(records, list):
        raise ValueError(f"the {metric!r} results must be a list of score records.")
    return records


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Opens a temporary file beside ``path``; on success it replaces ``path``.

    Readers see the old file or the complete new one, never a partial write; on
    an error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
    try:
        with os.fdopen(
            fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})
        ) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(text)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula


def _csv_cell(value: Any) -> Any:
    """Text that a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``, tab, CR
    first) gets a leading apostrophe: model names are user input. Numbers are left alone."""
    if isinstance(value, str) and value[:1] in _FORMULA_START:
        return "'" + value
    return value


def _csv_uncell(value: str) -> str:
    """Undoes :func:`_csv_cell` (an apostrophe before text that would run as a formula)."""
    if value[:1] == "'" and value[1:2] and value[1:2] in _FORMULA_START:
        return value[1:]
    return value


def results_csv(doc: dict[str, Any]) -> str:
    """The CSV table of a results document (see the module notes)."""
    metrics = document_metrics(doc)
    blocks = {m: {r["model"]: r for r in metric_records(doc, m)} for m in metrics}
    extra = {
        m: [k for k in next(iter(b.values()), {}) if k not in ("model", "rank", m, "status")]
        for m, b in blocks.items()
        if m != "ncti"
    }
    header = ["model"]
    for m in metrics:
        header += [m, f"{m}_rank"]
    if "ncti" in blocks:
        header += list(NCTI_FIELDS)
    for m, fields in extra.items():
        header += [f"{m}_{f}" for f in fields]
    header.append("status")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for model in blocks[metrics[0]] if metrics else ():
        row: dict[str, Any] = {"model": model}
        status = []
        for m in metrics:
            r = blocks[m][model]
            row[m], row[f"{m}_rank"] = r[m], r["rank"]
            if m == "ncti":
                row.update({f: r[f] for f in NCTI_FIELDS})
            else:
                row.update({f"{m}_{f}": r[f] for f in extra[m]})
            status += [f"{m}:{flag}" for flag in r["status"]]
        row["status"] = "|".join(status)
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return buf.getvalue()


def write_results(out_dir: str | os.PathLike, document: dict[str, Any]) -> tuple[Path, Path]:
    """Writes ``scores.json`` and ``scores.csv`` into ``out_dir``, each atomically.

    The CSV goes first and the JSON, written last, records the CSV's SHA-256
    (``"csv_sha256"``): a run killed between the two leaves the old JSON, which
    :func:`read_results` then finds inconsistent with the new CSV and says so.
    """
    out = Path(out_dir)
    json_path, csv_path = out / "scores.json", out / "scores.csv"
    table = results_csv(document)
    atomic_write_text(csv_path, table)
    document = {**document, "csv_sha256": hashlib.sha256(table.encode()).hexdigest()}
    atomic_write_text(json_path, json.dumps(document, indent=1, allow_nan=False) + "\n")
    return json_path, csv_path


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a ``scores.json`` (or the directory holding it), checking its schema."""
    path = Path(path)
    if path.is_dir():
        path = path / "scores.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable results file ({err}).") from None
    if not isinstance(doc, dict) or doc.get("schema") not in READABLE_SCHEMAS:
        raise ValueError(f"{path}: not an ncti-jax results file (schema {SCHEMA!r}).")
    table = path.with_name("scores.csv")
    if (
        "csv_sha256" in doc
        and table.exists()
        and hashlib.sha256(table.read_bytes()).hexdigest() != doc["csv_sha256"]
    ):
        warnings.warn(
            f"{table} is not the table of {path} (a run was interrupted between writing "
            "the two, or one was edited); the JSON is used.",
            UserWarning,
            stacklevel=2,
        )
    return doc


def format_table(records: list[dict[str, Any]]) -> str:
    """A plain-text ranked table of result records."""
    head = (
        "rank",
        "model",
        "ncti",
        "etf",
        "ncc",
        "vc",
        "etf_n",
        "ncc_n",
        "vc_n",
        "solver",
        "status",
    )

    def num(value, spec):
        return "-" if value is None else format(value, spec)

    rows = [
        (
            num(r["rank"], "d"),
            r["model"],
            num(r["ncti"], ".4f"),
            num(r["etf"], ".6g"),
            num(r["ncc"], ".6f"),
            num(r["vc"], ".6f"),
            num(r["etf_norm"], ".3f"),
            num(r["ncc_norm"], ".3f"),
            num(r["vc_norm"], ".3f"),
            r["solver"],
            ",".join(r["status"]) or "-",
        )
        for r in records
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    right = {0, 2, 3, 4, 5, 6, 7, 8}

    def line(cells):
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def format_metrics_table(doc: dict[str, Any]) -> str:
    """Several metrics side by side: one row per model (in the first metric's order),
    each metric's value and, in brackets, its rank ("-" where unranked)."""
    metrics = document_metrics(doc)
    blocks = {m: {r["model"]: r for r in metric_records(doc, m)} for m in metrics}
    head = ["model", *metrics]
    rows = []
    for model in blocks[metrics[0]]:
        cells = [model]
        for m in metrics:
            r = blocks[m][model]
            cells.append("-" if r[m] is None else f"{r[m]:.5g} ({r['rank']})")
        rows.append(cells)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


class _DuplicateKeyError(ValueError):
    """A key that appears twice in one JSON object (raised by :func:`_unique_pairs`)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses duplicate keys (``json`` keeps the last silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _read_json(path: Path, what: str) -> Any:
    """Parses a JSON file (a UTF-8 BOM allowed), refusing duplicate keys; errors name ``path``."""
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_unique_pairs)
    except _DuplicateKeyError as err:
        raise ValueError(
            f"{path}: {err.key!r} appears more than once in one JSON object; each model "
            "(and field) must be listed once, or the last would silently win."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable {what} file ({err}).") from None


def _read_csv_columns(
    path: Path, columns: tuple[str, ...], what: str
) -> list[tuple[int, dict[str, str]]]:
    """``[(line, {column: stripped cell})]`` of a CSV with ``columns`` (names matched
    case-insensitively, a UTF-8 BOM allowed); blank lines are skipped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(
                    f"{path}: empty file; expected a CSV with {','.join(columns)} columns."
                )
            names = [h.strip().lower() for h in header]
            for col in columns:
                if names.count(col) != 1:
                    problem = "no" if col not in names else "more than one"
                    raise ValueError(
                        f"{path}: {problem} {col!r} column in the header {header}; expected a "
                        f"{what} CSV with {','.join(columns)} columns (any case)."
                    )
            index = {col: names.index(col) for col in columns}
            rows = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                cells = {c: row[i].strip() if i < len(row) else "" for c, i in index.items()}
                rows.append((reader.line_num, cells))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a readable {what} file ({err}).") from None


def _finite(value: Any, *, percent: bool = False) -> float | None:
    """``value`` as a finite float, or None when it is not one.

    Numbers (not booleans) and numeric strings are accepted; with ``percent`` a trailing
    ``%`` is allowed and dropped, so ``"91.5 %"`` is 91.5: the same scale as a plain 91.5.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if percent and text.endswith("%"):
            text = text[:-1].rstrip()
        try:
            value = float(text)
        except ValueError:
            return None
    elif not isinstance(value, (int, float)):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if np.isfinite(x) else None


def _check_unique(path: Path, model: str, seen: dict[str, str], where: str) -> None:
    if model in seen:
        raise ValueError(
            f"{path}: model {model!r} is listed twice ({seen[model]} and {where}); each model "
            "must appear once."
        )
    seen[model] = where


def read_scores(path: str | os.PathLike, metric: str = "ncti") -> dict[str, float]:
    """``{model: score}`` of one metric (NCTI by default) from a results file, in the
    file's order.

    Accepts an ncti-jax ``scores.json`` (or its directory), a JSON mapping
    ``{model: score}`` or one with such a mapping under the metric's name (e.g. published
    scores under ``"ncti"``), or a CSV with ``model`` and metric columns (any case).

    A model without a score (``null``, or an empty CSV cell: the engine could not rank it)
    is left out with a warning. A model listed twice, or a record without a finite numeric
    score, is a :class:`ValueError` naming the file and the model.
    """
    import warnings

    path = Path(path)
    if path.is_dir():
        path = path / "scores.json"
    scores: dict[str, float] = {}
    unranked: list[str] = []
    seen: dict[str, str] = {}
    if path.suffix.lower() == ".csv":
        for line, row in _read_csv_columns(path, ("model", metric), "scores"):
            model = _csv_uncell(row["model"])
            if not model:
                raise ValueError(f"{path}, line {line}: empty model name.")
            _check_unique(path, model, seen, f"line {line}")
            if row[metric] == "":
                unranked.append(model)
                continue
            value = _finite(row[metric])
            if value is None:
                raise ValueError(
                    f"{path}, line {line} (model {model!r}): {metric} {row[metric]!r} is not a "
                    "finite number."
                )
            scores[model] = value
    else:
        doc = _read_json(path, "scores")
        if isinstance(doc, dict) and doc.get("schema") in READABLE_SCHEMAS:
            try:
                records = metric_records(doc, metric)
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}: {err}") from None
            for i, rec in enumerate(records):
                model = rec.get("model") if isinstance(rec, dict) else None
                if not isinstance(model, str) or not model:
                    raise ValueError(f"{path}: score record {i} has no model name.")
                _check_unique(path, model, seen, f"record {i}")
                if metric not in rec:
                    raise ValueError(
                        f"{path}: the record of model {model!r} has no {metric!r} score."
                    )
                if rec[metric] is None:  # the engine could not rank this model
                    unranked.append(model)
                    continue
                value = _finite(rec[metric]) if not isinstance(rec[metric], str) else None
                if value is None:
                    raise ValueError(
                        f"{path}: the {metric!r} of model {model!r} is {rec[metric]!r}, not a "
                        "finite number."
                    )
                scores[model] = value
        else:
            if isinstance(doc, dict) and "schema" in doc:
                raise ValueError(
                    f"{path}: schema {doc['schema']!r} is not a scores file; expected "
                    f"{SCHEMA!r} or a JSON {{model: score}} mapping."
                )
            fallback = doc if metric == "ncti" else None
            mapping = doc.get(metric, fallback) if isinstance(doc, dict) else None
            if not isinstance(mapping, dict):
                raise ValueError(
                    f"{path}: expected an ncti-jax scores.json or a JSON {{model: score}} "
                    f"mapping (optionally under {metric!r})."
                )
            for model, raw in mapping.items():
                if raw is None:
                    unranked.append(model)
                    continue
                value = _finite(raw) if not isinstance(raw, str) else None
                if value is None:
                    raise ValueError(
                        f"{path}: the score of model {model!r} is {raw!r}, not a finite number."
                    )
                scores[model] = value
    if unranked:
        warnings.warn(
            f"{path}: {len(unranked)} model(s) without "
            f"{'an NCTI' if metric == 'ncti' else 'a ' + metric} score (unranked) left out: "
            f"{unranked}.",
            UserWarning,
            stacklevel=2,
        )
    return scores


def scored_metrics(path: str | os.PathLike) -> list[str]:
    """The metrics a results file holds: every block of an ncti-jax v3 ``scores.json``,
    the metric columns of a CSV, ``["ncti"]`` for anything else."""
    from .metrics import NAMES

    path = Path(path)
    if path.is_dir():
        path = path / "scores.json"
    if path.suffix.lower() == ".csv":
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                header = [h.strip().lower() for h in next(csv.reader(f), [])]
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise ValueError(f"{path}: not a readable scores file ({err}).") from None
        return [m for m in NAMES if m in header] or ["ncti"]
    doc = _read_json(path, "scores")
    if isinstance(doc, dict) and doc.get("schema") in READABLE_SCHEMAS:
        try:
            return document_metrics(doc)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return ["ncti"]


def read_truth(path: str | os.PathLike) -> dict[str, float]:
    """``{model: accuracy}`` from a JSON mapping (optionally under ``"accuracy"``) or a CSV
    with ``model`` and ``accuracy`` columns (any case, a UTF-8 BOM allowed).

    Accuracies are numbers, or strings such as ``"91.5"`` or ``"91.5 %"``; a percent sign
    is dropped (91.5 % is read as 91.5, the same scale as a plain 91.5). A model listed
    twice, an empty, NaN, infinite or non-numeric accuracy is a :class:`ValueError`
    naming the file and the model (and the line of a CSV).
    """
    path = Path(path)
    truth: dict[str, float] = {}
    if path.suffix.lower() == ".csv":
        seen: dict[str, str] = {}
        for line, row in _read_csv_columns(path, ("model", "accuracy"), "ground-truth"):
            model = row["model"]
            if not model:
                raise ValueError(f"{path}, line {line}: empty model name.")
            _check_unique(path, model, seen, f"line {line}")
            value = _finite(row["accuracy"], percent=True)
            if value is None:
                raise ValueError(
                    f"{path}, line {line} (model {model!r}): accuracy {row['accuracy']!r} is "
                    "not a finite number."
                )
            truth[model] = value
    else:
        doc = _read_json(path, "ground-truth")
        mapping = doc.get("accuracy", doc) if isinstance(doc, dict) else None
        if not isinstance(mapping, dict):
            raise ValueError(
                f"{path}: not a ground-truth file; expected a JSON {{model: accuracy}} "
                "mapping (optionally under 'accuracy') or a CSV with model,accuracy columns."
            )
        for model, raw in mapping.items():
            value = _finite(raw, percent=True)
            if value is None:
                raise ValueError(
                    f"{path}: the accuracy of model {model!r} is {raw!r}, not a finite number."
                )
            truth[str(model)] = value
    if not truth:
        raise ValueError(f"{path}: no models in the ground-truth file.")
    return truth
