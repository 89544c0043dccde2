"""Training functions the tests sweep over; each leaves evidence in probe.dir."""
from __future__ import annotations

import json
import os
import time
from typing import Any

import raysweep


def _probe(config: dict[str, Any], **event: Any) -> None:
    d = config.get("probe", {}).get("dir")
    if d:
        event.update(number=config["search"]["trial_number"], pid=os.getpid())
        with open(os.path.join(d, f"{event['number']}-{event['kind']}-{time.time_ns()}.json"), "w") as f:
            json.dump(event, f)


def timed(config: dict[str, Any]) -> None:
    """Reports score = x each epoch after sleeping probe.sleep seconds."""
    probe = config.get("probe", {})
    x = float(config["model"]["dropout"])
    _probe(config, kind="start", t=time.time())
    for epoch in range(int(config["training"]["num_epochs"])):
        time.sleep(float(probe.get("sleep", 0.05)))
        if probe.get("raise_on") is not None and config["search"]["trial_number"] == probe["raise_on"]:
            raise ValueError("boom from the training function")
        raysweep.report({"score": x, "epoch": epoch})
    _probe(config, kind="end", t=time.time())


def no_metric(config: dict[str, Any]) -> None:
    raysweep.report({"accuracy": 0.5})


def leaky(config: dict[str, Any]) -> None:
    """Reports whether a module-level mark from an earlier trial is visible."""
    import tests.trainables as me

    seen = getattr(me, "_mark", None)
    me._mark = config["search"]["trial_number"]
    raysweep.report({"score": float(config["model"]["dropout"]), "leaked": 0 if seen is None else 1})


def read_probes(d: str) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for name in os.listdir(d):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(d, name)) as f:
            ev = json.load(f)
        out.setdefault(ev["number"], {})[ev["kind"]] = ev
    return out


def flaky(config: dict[str, Any]) -> None:
    """Fails once at epoch 2 (first attempt only), checkpointing every epoch."""
    import tempfile

    probe = config["probe"]
    marker = os.path.join(probe["dir"], f"failed-once-{config['search']['trial_number']}")
    start = 0
    ckpt = raysweep.get_checkpoint()
    if ckpt:
        with open(os.path.join(ckpt, "epoch")) as f:
            start = int(f.read()) + 1
    _probe(config, kind=f"attempt{start}", t=time.time(), first_epoch=start)
    for epoch in range(start, int(config["training"]["num_epochs"])):
        if epoch == 2 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("node lost (simulated)")
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "epoch"), "w") as f:
                f.write(str(epoch))
            raysweep.report({"score": float(config["model"]["dropout"]), "epoch": epoch}, checkpoint=d)
