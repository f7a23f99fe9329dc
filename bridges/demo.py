"""``ncti demo``: the paper's experiment in miniature, offline, end to end.

Data: scikit-learn's bundled handwritten digits (8 x 8, 10 classes). The source
task is digits 0-4, the target task digits 5-9 (split 30/70 into target-train
and target-test). A zoo of small CNNs that differ in what changes transferability
(width, depth, pre-training length, label noise, number of source classes, no
pre-training at all) is pre-trained on the source task and cached. The ground
truth is each model's target-test accuracy after fine-tuning on target-train
with one fixed protocol. NCTI scores the zoo from target-train features,
extracted in one pass and handed to JAX through DLPack, and the report says how
well NCTI's ranking matches the fine-tune ranking.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from . import dlpack, extract

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)


@dataclasses.dataclass(frozen=True)
class ZooMember:
    """A small CNN and how it is pre-trained."""

    name: str
    width: int = 32
    depth: int = 2
    epochs: int = 30
    label_noise: float = 0.0
    source_classes: int = 5


FULL_ZOO = (
    ZooMember("cnn-w32-d2"),
    ZooMember("cnn-w8-d2", width=8),
    ZooMember("cnn-w32-d1", depth=1),
    ZooMember("cnn-w32-d3", depth=3),
    ZooMember("cnn-w32-d2-2ep", epochs=2),
    ZooMember("cnn-w32-d2-noise60", label_noise=0.6),
    ZooMember("cnn-w32-d2-2cls", source_classes=2),
    ZooMember("cnn-w32-d2-untrained", epochs=0),
)
QUICK_ZOO = (
    ZooMember("cnn-w8-d1", width=8, depth=1, epochs=1),
    ZooMember("cnn-w8-d2", width=8, depth=2, epochs=1),
    ZooMember("cnn-w8-d1-untrained", width=8, depth=1, epochs=0),
)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    zoo: tuple[ZooMember, ...] = FULL_ZOO
    finetune_epochs: int = 15
    batch_size: int = 64
    seed: int = 0


class SmallCNN(nn.Module):
    """conv3x3-BN-ReLU blocks (max-pool after the first), global average pool, linear head."""

    def __init__(self, width: int, depth: int, n_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for i in range(depth):
            out = width * (2 if i == depth - 1 and depth > 1 else 1)
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            if i == 0:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def digits_tasks(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Source, target-train and target-test splits of the digits (seeded)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target, dtype=torch.int64)
    source = torch.isin(y, torch.tensor(SOURCE_CLASSES))
    xt, yt = x[~source], y[~source] - TARGET_CLASSES[0]
    # Few target labels (30%), the regime where the choice of pre-trained model matters.
    train, test = train_test_split(
        np.arange(len(yt)), train_size=0.3, random_state=seed, stratify=yt.numpy()
    )
    return {
        "source": (x[source], y[source]),
        "target_train": (xt[train], yt[train]),
        "target_test": (xt[test], yt[test]),
    }


def _train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    on_epoch=None,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.to(device).train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss_fn(model(x[idx].to(device)), y[idx].to(device)).backward()
            opt.step()
        if on_epoch:
            on_epoch()
    model.eval()


def _member_key(member: ZooMember, seed: int) -> str:
    text = json.dumps({**dataclasses.asdict(member), "seed": seed, "v": 1}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ncti-jax" / "demo"


def pretrained_zoo(
    config: DemoConfig, source, device: torch.device, cache_dir: Path, progress: bool = True
) -> tuple[dict[str, nn.Module], float]:
    """Pre-trains (or loads from the cache) every zoo member; returns models and seconds spent."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    x, y = source
    rng = np.random.default_rng(config.seed)
    bar = _bar(sum(m.epochs for m in config.zoo), "pre-training", progress)
    spent, zoo = 0.0, {}
    for i, member in enumerate(config.zoo):
        torch.manual_seed(config.seed * 1000 + i)
        model = SmallCNN(member.width, member.depth, len(SOURCE_CLASSES))
        path = cache_dir / f"{member.name}-{_member_key(member, config.seed)}.pt"
        if path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            bar.update(member.epochs)
        else:
            keep = y < member.source_classes
            xs, ys = x[keep], y[keep].clone()
            noisy = torch.from_numpy(rng.random(len(ys)) < member.label_noise)
            ys[noisy] = torch.from_numpy(rng.integers(0, member.source_classes, int(noisy.sum())))
            start = time.perf_counter()
            _train(
                model,
                xs,
                ys,
                epochs=member.epochs,
                lr=3e-3,
                batch_size=config.batch_size,
                seed=config.seed + i,
                device=device,
                on_epoch=lambda: bar.update(1),
            )
            spent += time.perf_counter() - start
            tmp = path.with_suffix(".tmp")
            torch.save(model.cpu().state_dict(), tmp)
            os.replace(tmp, path)
        zoo[member.name] = model.cpu().eval()
    bar.close()
    return zoo, spent


def finetune_accuracy(
    model: nn.Module, tasks, config: DemoConfig, index: int, device: torch.device, on_epoch=None
) -> float:
    """Target-test accuracy after fine-tuning a copy of ``model`` (all layers, new head)."""
    import copy

    tuned = copy.deepcopy(model)
    torch.manual_seed(config.seed * 1000 + 500 + index)
    tuned.fc = nn.Linear(tuned.fc.in_features, len(TARGET_CLASSES))
    x, y = tasks["target_train"]
    _train(
        tuned,
        x,
        y,
        epochs=config.finetune_epochs,
        lr=1e-3,
        batch_size=config.batch_size,
        seed=config.seed + 100 + index,
        device=device,
        on_epoch=on_epoch,
    )
    xt, yt = tasks["target_test"]
    with torch.inference_mode():
        pred = tuned(xt.to(device)).argmax(dim=1).cpu()
    return float((pred == yt).float().mean())


def run_demo(
    config: DemoConfig = DemoConfig(),
    *,
    device: str = "auto",
    cache_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole experiment; returns the report (see :func:`format_report`)."""
    import ncti_jax
    from ncti_jax import ranking

    dev = extract.pick_device(device)
    tasks = digits_tasks(config.seed)
    start_total = time.perf_counter()
    zoo, pretrain_s = pretrained_zoo(
        config, tasks["source"], dev, cache_dir or default_cache_dir(), progress
    )

    # Ground truth: fine-tune every model with one fixed protocol.
    bar = _bar(len(zoo) * config.finetune_epochs, "fine-tuning", progress)
    start = time.perf_counter()
    truth = {
        name: finetune_accuracy(model, tasks, config, i, dev, on_epoch=lambda: bar.update(1))
        for i, (name, model) in enumerate(zoo.items())
    }
    finetune_s = time.perf_counter() - start
    bar.close()

    # NCTI: one extraction pass over target-train for the whole zoo, then one scoring call.
    x, y = tasks["target_train"]
    cut = {name: model.features.eval() for name, model in zoo.items()}  # penultimate layer
    identity = {name: ("tensor", _identity) for name in cut}
    start = time.perf_counter()
    feats = extract.extract_features(
        cut, TensorDataset(x, y), identity, batch_size=256, device=dev, progress=False
    )
    handoff = {name: dlpack.to_jax(t) for name, t in feats.features.items()}
    extract_s = time.perf_counter() - start
    k = min(64, *(int(t.shape[1]) for t in feats.features.values()))
    start = time.perf_counter()
    result = ncti_jax.score_zoo(handoff, feats.labels, n_components=k)
    score_s = time.perf_counter() - start
    start = (
        time.perf_counter()
    )  # the same call again: compiled, as for every later zoo of this shape
    ncti_jax.score_zoo(handoff, feats.labels, n_components=k)
    score_warm_s = time.perf_counter() - start

    records = result.to_records()
    for r in records:
        r["finetune_accuracy"] = truth[r["model"]]
    names = [r["model"] for r in records]
    scores = np.array([r["ncti"] for r in records])
    acc = np.array([truth[n] for n in names])
    return {
        "seed": config.seed,
        "device": str(dev),
        "n_components": k,
        "target_train_samples": len(y),
        "models": records,
        "weighted_tau": float(ranking.weighted_tau(scores, acc)),
        "top1_rel_acc": float(ranking.top_k_relative_accuracy(scores, acc, 1)),
        "seconds": {
            "pretrain": pretrain_s,
            "finetune": finetune_s,
            "extract": extract_s,
            "score": score_s,
            "score_compiled": score_warm_s,
            "total": time.perf_counter() - start_total,
        },
    }


def _identity(t):
    return t


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{'rank':>4}  {'model':<22}{'ncti':>8}{'etf':>10}{'ncc':>8}{'vc':>8}{'fine-tune acc':>15}"
    ]
    for r in report["models"]:
        lines.append(
            f"{r['rank']:>4}  {r['model']:<22}{r['ncti']:8.3f}{r['etf']:10.2f}"
            f"{r['ncc']:8.3f}{r['vc']:8.3f}{100 * r['finetune_accuracy']:14.1f}%"
        )
    s = report["seconds"]
    lines += [
        "",
        f"weighted Kendall tau (NCTI vs fine-tune accuracy): {report['weighted_tau']:.3f}",
        f"top-1 relative accuracy of NCTI's pick: {report['top1_rel_acc']:.3f}",
        f"fine-tuning the zoo: {s['finetune']:.1f} s; NCTI: {s['extract'] + s['score']:.2f} s "
        f"(extraction {s['extract']:.2f} s, scoring {s['score']:.2f} s with compilation, "
        f"{s['score_compiled']:.3f} s compiled): fine-tuning / NCTI time "
        f"{s['finetune'] / (s['extract'] + s['score']):.1f}x, "
        f"{s['finetune'] / (s['extract'] + s['score_compiled']):.0f}x once compiled",
    ]
    return "\n".join(lines)


def _bar(total: int, desc: str, enabled: bool):
    return extract._progress(total, enabled, unit="epoch", desc=desc)
