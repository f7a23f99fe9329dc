"""Feature stores in, results out.

Feature stores (read with ``allow_pickle=False``, ``.npy`` files memory-mapped):

- **directory layout**: ``<model>.npy`` (or ``<model>.npz`` holding one array,
  or an array named ``features``) per model, plus ``labels.npy``;
- **authors' layout**: ``<model>_<dataset>_feature.npy`` and
  ``<model>_<dataset>_label.npy`` per model, selected with ``dataset``.

Results: :func:`write_results` writes ``scores.json`` and ``scores.csv``
atomically (a temporary file in the same directory, then a rename), so a crash
never leaves a half-written file and an earlier result is replaced only by a
complete one. The JSON schema (``"schema": "ncti-jax/scores/v1"``) is::

    {
      "schema": "ncti-jax/scores/v1",
      "created": ISO 8601 time (UTC),
      "settings": {"n_components", "precision", "dtype", "strategy", "dataset",
                   "source", "n_samples", "n_classes", "n_models"},
      "versions": {"ncti_jax", "jax", "jaxlib", "numpy", "scipy", "python", "backend"},
      "models": [ one record per model, best first:
        {"model", "rank", "ncti", "etf", "ncc", "vc", "etf_norm", "ncc_norm",
         "vc_norm", "solver", "shrinkage", "n_components", "status"} ]
    }

The CSV has one row per model with the record's fields (status joined by ``|``).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import os
import platform
import re
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

SCHEMA = "ncti-jax/scores/v1"
LABELS_FILE = "labels.npy"
_AUTHORS = re.compile(r"^(?P<model>.+)_(?P<dataset>[^_]+)_(?P<kind>feature|label)\.npy$")
RECORD_FIELDS = (
    "model",
    "rank",
    "ncti",
    "etf",
    "ncc",
    "vc",
    "etf_norm",
    "ncc_norm",
    "vc_norm",
    "solver",
    "shrinkage",
    "n_components",
    "status",
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


def _load_directory_layout(root: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    labels = load_array(root / LABELS_FILE, mmap=False)
    files = sorted(
        f
        for f in root.iterdir()
        if f.suffix in (".npy", ".npz") and f.name != LABELS_FILE and f.is_file()
    )
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


def results_document(records: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON document of :data:`SCHEMA` for ``records`` (best first)."""
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "versions": versions(),
        "models": records,
    }


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Opens a temporary file beside ``path``; on success it replaces ``path``.

    Readers see the old file or the complete new one, never a partial write; on
    an error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(text)


def records_csv(records: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RECORD_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({**{k: r[k] for k in RECORD_FIELDS}, "status": "|".join(r["status"])})
    return buf.getvalue()


def write_results(out_dir: str | os.PathLike, document: dict[str, Any]) -> tuple[Path, Path]:
    """Writes ``scores.json`` and ``scores.csv`` into ``out_dir`` atomically."""
    out = Path(out_dir)
    json_path, csv_path = out / "scores.json", out / "scores.csv"
    atomic_write_text(json_path, json.dumps(document, indent=1, allow_nan=False) + "\n")
    atomic_write_text(csv_path, records_csv(document["models"]))
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
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not an ncti-jax results file (schema {SCHEMA!r}).")
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


def read_scores(path: str | os.PathLike) -> dict[str, float]:
    """``{model: NCTI score}`` from a results file.

    Accepts an ncti-jax ``scores.json`` (or its directory), a JSON mapping
    ``{model: score}`` or one with such a mapping under ``"ncti"`` (e.g. published
    scores), or a CSV with ``model`` and ``ncti`` columns.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "scores.json"
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            return {r["model"]: float(r["ncti"]) for r in rows}
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a readable scores file ({err!r}).") from None
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA:  # unranked models have no score
        return {r["model"]: float(r["ncti"]) for r in doc["models"] if r["ncti"] is not None}
    mapping = doc.get("ncti", doc) if isinstance(doc, dict) else None
    if not isinstance(mapping, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in mapping.values()
    ):
        raise ValueError(
            f"{path}: expected an ncti-jax scores.json or a JSON {{model: score}} "
            "mapping (optionally under 'ncti')."
        )
    return {str(k): float(v) for k, v in mapping.items()}


def read_truth(path: str | os.PathLike) -> dict[str, float]:
    """``{model: accuracy}`` from a JSON mapping (optionally under ``"accuracy"``) or a CSV
    with ``model`` and ``accuracy`` columns."""
    path = Path(path)
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return {r["model"]: float(r["accuracy"]) for r in csv.DictReader(f)}
        doc = json.loads(path.read_text(encoding="utf-8"))
        mapping = doc.get("accuracy", doc)
        return {str(k): float(v) for k, v in mapping.items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(
            f"{path}: not a readable ground-truth file; expected a JSON "
            f"{{model: accuracy}} or a CSV with model,accuracy columns ({err!r})."
        ) from None
