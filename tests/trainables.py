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
    """Reports what a trial on a reused worker can see of the trial before it."""
    import tempfile

    import tests.trainables as me
    from raysweep.trial import current_session

    seen = getattr(me, "_mark", None)           # the user's own module state: theirs to manage
    me._mark = config["search"]["trial_number"]
    stale_checkpoint = raysweep.get_checkpoint() is not None
    stale_history = len(current_session().history) > 0
    config["model"]["dropout"] = -1.0           # mutating the config must not reach the next trial
    _probe(config, kind="start", t=time.time(), reused=seen is not None)
    with tempfile.TemporaryDirectory() as d:
        raysweep.report({"score": float(me._mark), "stale_checkpoint": int(stale_checkpoint),
                         "stale_history": int(stale_history)}, checkpoint=d)


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


def _where() -> dict[str, Any]:
    """The Ray node and GPUs this trial runs on (empty outside Ray)."""
    try:
        import ray

        if not ray.is_initialized():
            return {}
        return {"node_id": ray.get_runtime_context().get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    except Exception as exc:  # pragma: no cover - evidence only
        return {"where_error": repr(exc)}


def on_node(config: dict[str, Any]) -> None:
    """Checkpoints every epoch; each attempt leaves ``attempt<first epoch>`` with its node id.

    A retried trial that resumed from its checkpoint leaves an attempt whose
    first epoch is not 0.
    """
    import tempfile

    probe = config["probe"]
    start = 0
    ckpt = raysweep.get_checkpoint()
    if ckpt:
        with open(os.path.join(ckpt, "epoch")) as f:
            start = int(f.read()) + 1
    _probe(config, kind=f"attempt{start}", t=time.time(), first_epoch=start, **_where())
    for epoch in range(start, int(config["training"]["num_epochs"])):
        time.sleep(float(probe.get("sleep", 0.05)))
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "epoch"), "w") as f:
                f.write(str(epoch))
            _probe(config, kind=f"epoch{epoch}", t=time.time(), **_where())
            raysweep.report({"score": float(config["model"]["dropout"]), "epoch": epoch}, checkpoint=d)


def gpu_share(config: dict[str, Any]) -> None:
    """Records the GPU Ray assigned; holds until ``probe.expect`` trials have started.

    The hold (at most ``probe.hold`` seconds) makes trials that can run
    concurrently overlap for certain, so the test can count the overlap.
    """
    probe = config["probe"]
    d, expect = probe["dir"], int(probe["expect"])
    started = time.time()
    seen = _where()
    if probe.get("cuda"):
        import torch

        seen["cuda_devices"] = torch.cuda.device_count()
        seen["cuda_ok"] = bool((torch.ones(4, device="cuda") * 2).sum().item() == 8)
    _probe(config, kind="start", t=started, **seen)
    while time.time() - started < float(probe.get("hold", 60)):
        if sum(name.split("-")[1] == "start" for name in os.listdir(d) if name.endswith(".json")) >= expect:
            break
        time.sleep(0.1)
    time.sleep(float(probe.get("sleep", 0.5)))
    raysweep.report({"score": float(config["model"]["dropout"]), "epoch": 0})
    _probe(config, kind="end", t=time.time())
