"""Built-in models (simple_cnn, tiny_net, mlp) and torchvision models by name.

Every builder takes ``num_classes`` and ``dropout`` plus the input's channels
and size. torchvision is optional: its architectures (``resnet18``, ...) are
available when it is importable, otherwise naming one is a ConfigError.
"""
from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Callable

from raysweep.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

BUILTIN_MODELS = ("simple_cnn", "tiny_net", "mlp")


def _simple_cnn(num_classes: int, dropout: float, in_channels: int, image_size: int) -> "nn.Module":
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Dropout(dropout), nn.Linear(64 * 4, 128), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(128, num_classes),
    )


def _tiny_net(num_classes: int, dropout: float, in_channels: int, image_size: int) -> "nn.Module":
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Dropout(dropout), nn.Linear(16 * 4, num_classes),
    )


def _mlp(num_classes: int, dropout: float, in_channels: int, image_size: int) -> "nn.Module":
    from torch import nn

    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 256), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(256, 128), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(128, num_classes),
    )


_BUILDERS: dict[str, Callable[[int, float, int, int], "nn.Module"]] = {
    "simple_cnn": _simple_cnn,
    "tiny_net": _tiny_net,
    "mlp": _mlp,
}


def torchvision_available() -> bool:
    """Whether ``import torchvision`` works here."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def build_model(name: str, num_classes: int, dropout: float = 0.0, *, in_channels: int = 3,
                image_size: int = 32, pretrained: bool = False) -> "nn.Module":
    """A model for ``(N, in_channels, image_size, image_size)`` inputs and ``num_classes`` logits.

    >>> build_model("tiny_net", 10, 0.1, in_channels=1, image_size=8)  # doctest: +SKIP
    """
    if num_classes < 1:
        raise ConfigError(f"must be >= 1, got {num_classes}", key="model.num_classes")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"must be in [0, 1), got {dropout}", key="model.dropout")
    if name in _BUILDERS:
        if pretrained:
            raise ConfigError(f"{name} has no pretrained weights; set model.pretrained: false", key="model.pretrained")
        return _BUILDERS[name](num_classes, dropout, in_channels, image_size)
    return _torchvision_model(name, num_classes, dropout, in_channels, pretrained)


def _torchvision_model(name: str, num_classes: int, dropout: float, in_channels: int,
                       pretrained: bool) -> "nn.Module":
    if not torchvision_available():
        close = difflib.get_close_matches(name, BUILTIN_MODELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; built-in models are {', '.join(BUILTIN_MODELS)}, "
                          "and torchvision architectures need torchvision, which is not importable here",
                          key="model.name")
    import torchvision
    from torch import nn

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, [*BUILTIN_MODELS, *available], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}", key="model.name")
    if pretrained:
        model = torchvision.models.get_model(name, weights="DEFAULT")
        _replace_head(model, num_classes)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if dropout > 0:
        _set_dropout(model, dropout)
    if in_channels != 3:
        model = nn.Sequential(_RepeatChannels(3), model)
    return model


def _replace_head(model: "nn.Module", num_classes: int) -> None:
    from torch import nn

    last_name, last = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last_name, last = n, m
    if last is None or last_name is None:
        raise ConfigError("cannot find a Linear classifier head to replace", key="model.name")
    parent = model
    *path, leaf = last_name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, leaf, nn.Linear(last.in_features, num_classes))


def _set_dropout(model: "nn.Module", p: float) -> None:
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def _RepeatChannels(n: int) -> "nn.Module":
    from torch import nn

    class RepeatChannels(nn.Module):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return x.expand(-1, n, -1, -1) if x.shape[1] == 1 else x

    return RepeatChannels()
