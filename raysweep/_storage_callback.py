"""The Tune callback behind :func:`raysweep.storage.sync_callback` (imports Ray)."""
from __future__ import annotations

from typing import Any

from ray.tune import Callback

from raysweep import storage


class StudySyncCallback(Callback):
    """Uploads the study mirror when Ray saves its experiment state; pickles to nothing.

    Tune calls ``get_state`` right after writing its experiment state and before
    uploading it, so the study in the bucket is never older than Ray's view of
    the trials there.
    """

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        pass

    def get_state(self) -> dict[str, Any] | None:
        storage.sync_active(force=True)
        return None

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        storage.sync_active()
