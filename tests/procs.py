"""Helpers for the tests that run drivers, Ray nodes and servers as real processes."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import yaml


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a process started with ``start_new_session=True`` and everything it started."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def kill(pids: set[int], term_wait: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, exactly these PIDs (never a global `ray stop`)."""
    for sig, wait in ((signal.SIGTERM, term_wait), (signal.SIGKILL, 5.0)):
        alive = set()
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.add(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            alive = {p for p in alive if not _zombie(p)}
            time.sleep(0.2)
        if not alive:
            return
        pids = alive


def count_trials(db: Path, state: str) -> int:
    """Trials in ``state`` in a SQLite study file (0 while it does not exist yet)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("select count(*) from trials where state = ?", (state,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def quadratic_config(tmp: Path, name: str, *, n_trials: int, sleep: float, seed: int = 3,
                     **search: object) -> Path:
    """A sweep over raysweep.examples.quadratic:train, 6 epochs of ``sleep`` seconds each."""
    data = {
        "seed": seed,
        "training": {"entrypoint": "raysweep.examples.quadratic:train", "num_epochs": 6},
        "optimizer": {"lr": 0.01, "momentum": 0.9},
        "quadratic": {"sleep": sleep},
        "search": {"study_name": name, "n_trials": n_trials, "metric": "score",
                   "sampler": {"type": "TPESampler", "n_startup_trials": 3, "seed": seed},
                   "pruner": "none",
                   "search_space": {"optimizer.lr": {"type": "loguniform", "low": 1e-4, "high": 1.0},
                                    "optimizer.momentum": {"type": "uniform", "low": 0.5, "high": 0.99}},
                   **search},
        "ray": {"resources_per_trial": {"cpu": 1}, "max_failures": 1},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
