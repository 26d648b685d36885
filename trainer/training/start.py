"""Where a run starts: its data read and checked once, and its first model.

``train`` and ``resume`` (``fit.py``) both begin here. The model is either built from the zoo
(pretrained weights or none) or rebuilt from an earlier tlsync run, whose head rows are carried
over class by class (``--class-map`` when the names differ), with a line saying what was kept.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlsync.console import info
from tlsync.errors import TlsyncError
from tlsync.format import Item
from tlsync.models import WEIGHTS
from tlsync.store import DatasetVersion

from ..models.zoo import build_model
from .checkpoint import load_checkpoint, rebuild_model, resolve_checkpoint, transfer_weights
from .settings import DEFAULT_MODEL, TrainConfig


@dataclass
class TrainData:
    """The train and val items, read from the dataset version once, before the first step."""

    train: list[Item]
    val: list[Item]

    @classmethod
    def read(cls, version: DatasetVersion) -> TrainData:
        return cls(list(version.items("train")), list(version.items("val")))



def check_data(version: DatasetVersion) -> TrainData:
    """The train and val items; refuse data that cannot train, warn about classes that will not."""
    data = TrainData.read(version)
    if not data.train:
        raise TlsyncError(f"dataset {version.ref} has no items in its train split; nothing to train on "
                          f"(pull more data, or change --split-ratios)")
    if not any(item.annotations for item in data.train):
        raise TlsyncError(f"dataset {version.ref} has no boxes in its train split ({len(data.train)} images); "
                          f"a detector needs labelled boxes")
    labelled = {box.label for item in data.train for box in item.annotations}
    missing = [name for name in version.categories if name not in labelled]
    if missing:
        info(f"warning: {len(missing)} class(es) have no training boxes and cannot be learned: {', '.join(missing)}")
    if not data.val:
        info(f"warning: {version.ref} has no val split: no per-epoch evaluation, no early stopping, "
             f"best.pt is the last epoch")
    return data


def initial_model(cfg: TrainConfig, categories: list[str],
                  renamed_in_data: Collection[str] = ()) -> tuple[nn.Module, str, str]:
    """``(model, model name, weights source)``: pretrained or from scratch, or from an earlier tlsync model.

    ``renamed_in_data``: the ``--class-map`` names the union of several ``--dataset`` already
    renamed; every other name in the map must be a class of the parent run.
    """
    if cfg.weights in WEIGHTS:
        name = cfg.model or DEFAULT_MODEL
        return build_model(name, len(categories), cfg.weights, cfg.img_size), name, cfg.weights
    path = resolve_checkpoint(Path(cfg.weights))
    checkpoint = load_checkpoint(path)
    name = checkpoint["config"]["model"]
    if cfg.model and cfg.model != name:
        raise TlsyncError(f"--weights {cfg.weights} holds a {name} model; it cannot start a {cfg.model} "
                          f"(leave out --model, or use --weights coco|imagenet|none)")
    model = rebuild_model(checkpoint, len(categories), cfg.img_size)
    check_class_map(cfg.class_map, list(checkpoint["categories"]), categories, renamed_in_data)
    mapping = transfer_weights(model, checkpoint, categories, cfg.class_map)
    info(f"continuing from {path} ({checkpoint['config'].get('dataset', '?')}):")
    for line in describe_mapping(mapping):
        info("  " + line)
    return model, name, f"{path} ({checkpoint['config'].get('dataset', '?')})"


def check_class_map(class_map: dict[str, str], parent: list[str], child: list[str],
                    renamed_in_data: Collection[str]) -> None:
    """A ``--class-map`` entry must name a parent class (or one the datasets' union renamed) and a child class:
    a typo would otherwise leave the child class on a fresh row without a word."""
    for old, new in class_map.items():
        if old not in parent and old not in renamed_in_data:
            raise TlsyncError(f"--class-map {old}={new}: the parent run has no class {old!r} "
                              f"(its classes: {', '.join(parent)})")
        if new not in child:
            raise TlsyncError(f"--class-map {old}={new}: the dataset has no class {new!r} "
                              f"(its classes: {', '.join(child)})")


def describe_mapping(mapping: dict[str, Any]) -> list[str]:
    """Lines for the class mapping ``transfer_weights`` returned (kept, new and dropped classes)."""
    return [f"{key}: {', '.join(map(str, value)) or 'none'}" for key, value in mapping.items()]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
