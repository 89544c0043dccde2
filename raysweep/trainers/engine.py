"""One fold's training state and its epoch step: model, optimiser, scheduler, AMP.

:class:`FoldTrainer` is shared by standalone ``raysweep train``, a sweep trial
and each cross-validation fold actor. Its :meth:`~FoldTrainer.state` is what
``weights/last.pt``, ``weights/best.pt`` and sweep checkpoints hold.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from raysweep.errors import ConfigError, TrainerError
from raysweep.trainers import data as datamod
from raysweep.trainers.models import build_model

if TYPE_CHECKING:  # pragma: no cover
    import torch

STATE_FILE = "state.pt"
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")
BatchCallback = Callable[[int, int], None]   # (batches done, batches total)


def pick_device(spec: str) -> "torch.device":
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:<i>`` | ``mps`` -> a torch device."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("mps requested but not available here", key="training.device")
        return torch.device("mps")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"{spec} requested but torch.cuda.is_available() is False "
                              "(use device: auto or cpu)", key="training.device")
        if ":" in spec and int(spec[5:]) >= torch.cuda.device_count():
            raise ConfigError(f"{spec} requested but only {torch.cuda.device_count()} CUDA device(s) are visible",
                              key="training.device")
        return torch.device(spec)
    raise ConfigError(f"must be auto, cpu, cuda or cuda:<index>, got {spec!r}", key="training.device")


def resolve_seed(config: dict[str, Any]) -> int:
    """The config's seed, or a fresh random one written back into ``config``."""
    seed = config.get("seed")
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        config["seed"] = seed
    return int(seed)


def higher_is_better(metric: str, config: Mapping[str, Any] | None = None) -> bool:
    """Direction of a metric: ``search.direction`` for the search metric, else by its name."""
    search = (config or {}).get("search") or {}
    if search.get("metric") == metric and search.get("direction"):
        return search["direction"] == "maximize"
    return "loss" not in metric and "error" not in metric


def oom_message(batch_size: int, device: Any, model: str) -> str:
    """The one-line explanation of a CUDA out-of-memory failure."""
    return (f"CUDA out of memory at batch_size={batch_size} (model {model}, device {device}): "
            "restrict the batch sizes searched (drop the largest training.batch_size choices) "
            "or enable mixed precision (training.mixed_precision: true)")


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


class FoldTrainer:
    """Everything needed to train one fold, one epoch per :meth:`run_epoch` call."""

    def __init__(self, config: dict[str, Any], fold: int | None = None, *, device: str | None = None,
                 threads: int | None = None, on_batch: BatchCallback | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(max(1, int(threads)))
        self.config = config
        self.seed = resolve_seed(config)
        self.fold = int(config["data"].get("fold", 0) if fold is None else fold)
        tr, opt_cfg, sch_cfg, mcfg = config["training"], config["optimizer"], config["scheduler"], config["model"]
        self.batch_size = int(tr["batch_size"])
        self.num_epochs = int(tr["num_epochs"])
        self.device = pick_device(device or tr.get("device", "auto"))
        self.on_batch = on_batch
        random.seed(self.seed)
        torch.manual_seed(self.seed)
        self.data = datamod.load_fold(config, self.fold)
        n_classes = len(self.data.classes)
        num_classes = mcfg.get("num_classes") or n_classes
        if num_classes < n_classes:
            raise ConfigError(f"is {num_classes} but the dataset has {n_classes} classes", key="model.num_classes")
        self.model_name = str(mcfg["name"])
        self.model = build_model(self.model_name, int(num_classes), float(mcfg.get("dropout", 0.0)),
                                 in_channels=self.data.in_channels, image_size=self.data.image_size,
                                 pretrained=bool(mcfg.get("pretrained", False))).to(self.device)
        self.optimizer = build_optimizer(self.model.parameters(), opt_cfg)
        self.scheduler = build_scheduler(self.optimizer, sch_cfg, self.num_epochs)
        self.amp = bool(tr.get("mixed_precision", False))
        self.amp_dtype = torch.float16 if self.device.type in ("cuda", "mps") else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and self.device.type == "cuda" else None
        self.generator = torch.Generator().manual_seed(self.seed)
        self.augment = bool(config["data"].get("augment", False))
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.epoch = 0                  # the next epoch to run (0-based)
        self.history: list[dict[str, float]] = []
        search = config.get("search") or {}
        metric = search.get("metric") or "val_acc"
        self.metric = metric if metric in (*METRICS, "lr") else "val_acc"
        self.maximize = higher_is_better(self.metric, config)
        self.best_epoch: int | None = None
        self.best_value: float | None = None

    # -- one epoch -------------------------------------------------------
    def _autocast(self) -> Any:
        import torch

        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, validate, step the scheduler; returns the epoch's metrics."""
        try:
            return self._run_epoch()
        except Exception as exc:
            if _is_oom(exc):
                self._free_cuda()
                raise TrainerError(oom_message(self.batch_size, self.device, self.model_name)) from None
            raise

    def _run_epoch(self) -> dict[str, float]:
        import torch

        d = self.data
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.model.train()
        total, correct, loss_sum = 0, 0, 0.0
        n_batches = math.ceil(len(d.train_x) / self.batch_size)
        for i, (xb, yb) in enumerate(datamod.batches(d.train_x, d.train_y, self.batch_size, mean=d.mean, std=d.std,
                                                     device=self.device, shuffle=True, flip=self.augment,
                                                     generator=self.generator)):
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                out = self.model(xb)
                loss = self.loss_fn(out, yb)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            with torch.no_grad():
                loss_sum += float(loss.detach()) * len(yb)
                correct += int((out.argmax(1) == yb).sum())
                total += len(yb)
            if self.on_batch is not None:
                self.on_batch(i + 1, n_batches)
        if not math.isfinite(loss_sum):
            raise TrainerError(f"training loss is not finite at epoch {self.epoch} "
                               f"(optimizer.lr={lr:g}); lower the learning rate")
        val_loss, val_acc = self.evaluate(d.val_x, d.val_y)
        if self.scheduler is not None:
            self.scheduler.step()
        metrics = {"train_loss": loss_sum / max(total, 1), "train_acc": correct / max(total, 1),
                   "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "epoch": self.epoch}
        self.history.append(metrics)
        value = metrics[self.metric]
        if self.best_value is None or (value > self.best_value if self.maximize else value < self.best_value):
            self.best_value, self.best_epoch = float(value), self.epoch
        self.epoch += 1
        return metrics

    @property
    def last_was_best(self) -> bool:
        return self.best_epoch == self.epoch - 1

    def evaluate(self, x: "torch.Tensor", y: "torch.Tensor") -> tuple[float, float]:
        """Mean loss and accuracy on ``(x, y)``; NaNs when empty."""
        import torch

        if len(x) == 0:
            return float("nan"), float("nan")
        d = self.data
        self.model.eval()
        total, correct, loss_sum = 0, 0, 0.0
        with torch.no_grad():
            for xb, yb in datamod.batches(x, y, max(self.batch_size, 256), mean=d.mean, std=d.std,
                                          device=self.device):
                with self._autocast():
                    out = self.model(xb)
                    loss = self.loss_fn(out.float(), yb)
                loss_sum += float(loss) * len(yb)
                correct += int((out.argmax(1) == yb).sum())
                total += len(yb)
        return loss_sum / total, correct / total

    def test(self) -> tuple[float, float]:
        """Loss and accuracy on the shared test split."""
        return self.evaluate(self.data.test_x, self.data.test_y)

    def _free_cuda(self) -> None:
        import torch

        if self.device.type == "cuda":
            with contextlib.suppress(Exception):
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()

    # -- state -----------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Model, optimiser, scheduler, epoch (last completed, 0-based), history, RNG states."""
        import torch

        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch - 1,
            "history": [dict(h) for h in self.history],
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "metric": self.metric,
            "seed": self.seed,
            "fold": self.fold,
            "classes": list(self.data.classes),
            "model_name": self.model_name,
            "torch_rng": torch.get_rng_state(),
            "data_rng": self.generator.get_state(),
            "config": self.config,
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output; the next epoch is ``state["epoch"] + 1``."""
        import torch

        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"]) + 1
        self.history = [dict(h) for h in state.get("history", [])]
        self.best_epoch = state.get("best_epoch")
        self.best_value = state.get("best_value")
        if state.get("torch_rng") is not None:
            torch.set_rng_state(state["torch_rng"])
        if state.get("data_rng") is not None:
            self.generator.set_state(state["data_rng"])

    def save(self, path: str | Path) -> None:
        """Write :meth:`state` to ``path`` atomically."""
        save_state(self.state(), path)

    def to_bytes(self) -> bytes:
        import torch

        buf = io.BytesIO()
        torch.save(self.state(), buf)
        return buf.getvalue()


def save_state(state: Mapping[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temp file, then rename (a crash never leaves half a file)."""
    import torch

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, p)


def load_state(source: str | Path | bytes) -> dict[str, Any]:
    """Read a state written by :func:`save_state` or :meth:`FoldTrainer.to_bytes`."""
    import torch

    src: Any = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        return dict(torch.load(src, map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, EOFError) as exc:
        raise TrainerError(f"cannot read checkpoint {source if not isinstance(source, bytes) else '<bytes>'}: "
                           f"{exc}") from None


def build_optimizer(params: Iterator[Any], cfg: Mapping[str, Any]) -> "torch.optim.Optimizer":
    """sgd (lr, momentum, weight_decay), adam / adamw (lr, weight_decay)."""
    import torch

    name, lr, wd = cfg["name"], float(cfg["lr"]), float(cfg.get("weight_decay", 0.0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.0)), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"must be sgd, adam or adamw, got {name!r}", key="optimizer.name")


def build_scheduler(optimizer: "torch.optim.Optimizer", cfg: Mapping[str, Any], num_epochs: int) -> Any:
    """step (step_size, gamma), cosine (T_max, default num_epochs) or none; stepped once per epoch."""
    import torch

    name = cfg.get("name", "none")
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(cfg["step_size"]), gamma=float(cfg["gamma"]))
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(cfg.get("T_max") or num_epochs))
    if name == "none":
        return None
    raise ConfigError(f"must be step, cosine or none, got {name!r}", key="scheduler.name")
