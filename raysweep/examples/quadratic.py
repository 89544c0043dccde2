"""A training function without a model: a noisy quadratic bowl "trained" per epoch.

It shows the whole interface a user function needs (``configs/quadratic.yaml``
runs it)::

    raysweep run --config configs/quadratic.yaml

Each epoch moves a value towards the optimum at a rate set by ``optimizer.lr``;
the loss is lowest for lr near 0.1 and momentum near 0.9. It checkpoints each
epoch and resumes from the last checkpoint, like a real trainer.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from typing import Any

import raysweep


def _loss(x: float, momentum: float) -> float:
    return x * x + (momentum - 0.9) ** 2


def train(config: dict[str, Any]) -> None:
    opt = config["optimizer"]
    lr, momentum = float(opt["lr"]), float(opt.get("momentum", 0.9))
    epochs = int(config["training"]["num_epochs"])
    extra = config.get("quadratic", {})          # a section raysweep does not know: passed through
    sleep = float(extra.get("sleep", 0.0))
    fail_at = extra.get("fail_at_epoch")         # for demonstrating/testing failed trials

    x, start = 4.0, 0
    ckpt = raysweep.get_checkpoint()
    if ckpt:
        with open(os.path.join(ckpt, "state.json")) as f:
            state = json.load(f)
        x, start = state["x"], state["epoch"] + 1

    rate = min(0.95, lr * 5 / (1 + abs(math.log10(lr) + 1)))
    for epoch in range(start, epochs):
        if sleep:
            time.sleep(sleep)
        if fail_at is not None and epoch == int(fail_at):
            raise RuntimeError(f"quadratic: configured failure at epoch {epoch}")
        x = x * (1 - rate)
        loss = _loss(x, momentum)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump({"x": x, "epoch": epoch}, f)
            raysweep.report({"loss": loss, "score": -loss, "epoch": epoch, "x": x}, checkpoint=d)


def sleeper(config: dict[str, Any]) -> None:
    """Sleeps ``bench.seconds`` per epoch and reports a score from the params.

    A model of GPU-bound work for benchmarks: no CPU use in the trial.
    """
    bench = config.get("bench", {})
    seconds, epochs = float(bench.get("seconds", 0.1)), int(config["training"]["num_epochs"])
    lr = float(config["optimizer"]["lr"])
    for epoch in range(epochs):
        time.sleep(seconds)
        raysweep.report({"score": -abs(math.log10(lr) + 2) + 0.01 * epoch, "epoch": epoch})
