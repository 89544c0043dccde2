"""Where a sweep's files live: a local directory or a bucket (``s3://``, ``gs://``).

Ray writes checkpoints and experiment state under ``ray.storage_path``; with a
bucket there, raysweep also mirrors the study directory (``sweep.json``,
``curves.jsonl``, the default SQLite ``study.db``, and at the end
``best_config.yaml``, ``trials.parquet``, ``curves.parquet``, ``summary.txt``)
to ``<storage_path>/<study_name>/study/``. ``--resume`` on a machine that has
only the bucket and the config downloads what is missing locally first.

Credentials never come from the config. Ray is only ever handed a URI
(``s3://bucket/prefix?endpoint_override=host:port&scheme=http``) and pyarrow
takes the keys from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, an instance role;
``GOOGLE_APPLICATION_CREDENTIALS`` or the metadata server for ``gs://``): an
``S3FileSystem`` built with explicit keys would be pickled, keys in clear, into
``tuner.pkl`` and the experiment state, locally and in the bucket.

The study mirror is a snapshot, uploaded each time Ray saves its experiment
state (so the study is never older than Ray's view of the trials; the driver's
resume repair handles a study that is newer) and when the sweep ends. For a
team sharing one study while it runs, ``search.storage: postgresql://...`` is
the better choice: every driver and reader sees the live database.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from raysweep import constants
from raysweep.config import mask_url
from raysweep.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from raysweep.config import Config

log = logging.getLogger("raysweep")

#: bucket schemes raysweep hands to pyarrow (and Ray) as URIs
REMOTE_SCHEMES = ("s3", "gs", "gcs")
#: env vars naming an S3-compatible endpoint when ``ray.storage_endpoint`` is unset (AWS CLI's names)
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
#: the study directory's mirror, under the Ray experiment directory
MIRROR_DIR = "study"
#: files mirrored while the sweep runs (all files of the study dir are mirrored at the end)
LIVE_FILES = (constants.SWEEP_FILE, constants.CURVES_LOG_FILE, constants.STUDY_DB_FILE)
#: seconds between uploads of the study while the sweep runs (Ray's own saves are throttled too)
MIN_SYNC_INTERVAL_S = 2.0
_SECRET_QUERY_KEYS = ("access_key", "secret_key", "session_token")


def is_remote(path: str) -> bool:
    """True for a bucket URI (``s3://``, ``gs://``); local paths and ``file://`` are not."""
    return urlsplit(path).scheme.lower() in REMOTE_SCHEMES


def check_storage_path(cfg: "Config") -> None:
    """Reject credentials written into ``ray.storage_path`` (they would be stored in clear)."""
    p = cfg.ray.storage_path
    if not is_remote(p):
        return
    parts = urlsplit(p)
    secret_keys = [k for k, _ in parse_qsl(parts.query) if k.lower() in _SECRET_QUERY_KEYS]
    if "@" in parts.netloc or secret_keys:
        raise UsageError(
            f"{cfg.path}: ray.storage_path: credentials must not be in the config "
            f"(Ray would store them in clear in the bucket); got {mask_url(_strip_secrets(p))}; "
            f"set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or GOOGLE_APPLICATION_CREDENTIALS) instead")
    if not parts.netloc:
        raise UsageError(f"{cfg.path}: ray.storage_path: a bucket URI needs a bucket, "
                         f"like {parts.scheme}://bucket/prefix, got {p!r}")


def _strip_secrets(uri: str) -> str:
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in parse_qsl(parts.query)])
    return parts._replace(netloc=netloc, query=query).geturl()


def endpoint(cfg: "Config") -> str | None:
    """The S3-compatible endpoint: ``ray.storage_endpoint``, else ``$AWS_ENDPOINT_URL_S3``/``$AWS_ENDPOINT_URL``."""
    if cfg.ray.storage_endpoint:
        return cfg.ray.storage_endpoint
    for name in ENDPOINT_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def with_endpoint(uri: str, endpoint_url: str | None) -> str:
    """``uri`` with pyarrow's ``endpoint_override``/``scheme`` query set from ``endpoint_url``.

    >>> with_endpoint("s3://b/p", "http://127.0.0.1:9000")
    's3://b/p?endpoint_override=127.0.0.1%3A9000&scheme=http'

    Query keys already in ``uri`` win; ``endpoint_url`` without a scheme means https.
    """
    if not endpoint_url or not is_remote(uri):
        return uri
    parts = urlsplit(uri)
    query = dict(parse_qsl(parts.query))
    scheme, sep, host = endpoint_url.partition("://")
    if not sep:
        scheme, host = "https", endpoint_url
    query.setdefault("endpoint_override", host.rstrip("/"))
    query.setdefault("scheme", scheme)
    return parts._replace(query=urlencode(query)).geturl()


def ray_storage_path(cfg: "Config") -> str:
    """``ray.storage_path`` as Ray takes it: an absolute local path, or a bucket URI with its endpoint."""
    p = cfg.ray.storage_path
    if is_remote(p):
        return with_endpoint(p, endpoint(cfg))
    if p.startswith("file://"):
        p = p[len("file://"):]
    return str(Path(p).resolve())


def join(base: str, *names: str) -> str:
    """Append path segments to a local path or a URI, keeping the URI's query."""
    if not is_remote(base):
        return str(Path(base, *names))
    parts = urlsplit(base)
    path = "/".join([parts.path.rstrip("/"), *names])
    return parts._replace(path=path).geturl()


def experiment_path(cfg: "Config") -> str:
    """Ray's experiment directory: ``<storage_path>/<study_name>`` (a URI for a bucket)."""
    return join(ray_storage_path(cfg), cfg.search.study_name)


def bucket_path(cfg: "Config") -> str | None:
    """Where the study directory is mirrored (``<experiment>/study``); None for local storage."""
    exp = experiment_path(cfg)
    return join(exp, MIRROR_DIR) if is_remote(exp) else None


def filesystem(path: str) -> tuple[Any, str]:
    """The pyarrow filesystem and the path inside it, for a local path or a URI.

    A URI's filesystem takes its credentials from the environment only.
    """
    import pyarrow.fs as pafs

    if not is_remote(path):
        return pafs.LocalFileSystem(), str(Path(path.removeprefix("file://")).resolve())
    fs, fs_path = pafs.FileSystem.from_uri(path)
    return fs, fs_path


def db_url(url: str) -> str:
    """A study database URL SQLAlchemy can open with the installed PostgreSQL driver.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3; when only
    psycopg2 is installed (``psycopg2-binary``), the URL names it:
    ``postgresql+psycopg2://``. Every other URL is returned unchanged.
    """
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


# ---------------------------------------------------------------------------
# The study mirror
# ---------------------------------------------------------------------------


def _sqlite_snapshot(db: Path, dest: Path) -> None:
    """A consistent copy of a SQLite database that another connection may be writing."""
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
    try:
        out = sqlite3.connect(dest)
        try:
            src.backup(out)
        finally:
            out.close()
    finally:
        src.close()


def upload_study(study_dir: Path, remote: str, *, everything: bool = False) -> int:
    """Copy the study directory to ``remote`` (a URI); returns the number of files.

    ``everything=False`` uploads only :data:`LIVE_FILES` (what a resume needs);
    ``True`` the whole directory (plots and reports included). ``study.db`` is
    copied through SQLite's backup API, so a sweep writing it is no problem.
    """
    import pyarrow.fs as pafs

    fs, base = filesystem(remote)
    if everything:
        # SQLite's -wal/-shm/-journal files are not copied: the snapshot of study.db holds their data
        files = sorted(p for p in study_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and not p.name.startswith(f"{constants.STUDY_DB_FILE}-"))
    else:
        files = [study_dir / n for n in LIVE_FILES if (study_dir / n).is_file()]
    n = 0
    with tempfile.TemporaryDirectory(prefix="raysweep-sync-") as tmp:
        for path in files:
            rel = path.relative_to(study_dir).as_posix()
            src = path
            if path.name == constants.STUDY_DB_FILE and path.parent == study_dir:
                src = Path(tmp) / path.name
                _sqlite_snapshot(path, src)
            parent = f"{base}/{rel}".rsplit("/", 1)[0]
            fs.create_dir(parent, recursive=True)
            pafs.copy_files(str(src), f"{base}/{rel}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
            n += 1
    return n


def download_study(remote: str, study_dir: Path) -> list[str]:
    """Copy the mirror at ``remote`` into ``study_dir``, files missing locally only.

    Returns the relative paths copied ([] when there is no mirror).
    """
    import pyarrow.fs as pafs

    fs, base = filesystem(remote)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    copied = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base):].lstrip("/")
        dest = study_dir / rel
        if not rel or dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.download")
        pafs.copy_files(info.path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        os.replace(tmp, dest)
        copied.append(rel)
    return sorted(copied)


class BucketSync:
    """Uploads the study directory of the running sweep to its bucket, throttled."""

    def __init__(self, study_dir: Path, remote: str, min_interval: float = MIN_SYNC_INTERVAL_S) -> None:
        self.study_dir = study_dir
        self.remote = remote
        self.min_interval = min_interval
        self._last = 0.0

    def sync(self, *, force: bool = False, everything: bool = False) -> None:
        """Upload now (or skip when the last upload was under ``min_interval`` ago).

        Upload errors are logged, never raised: a sweep does not stop over its mirror.
        """
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        try:
            upload_study(self.study_dir, self.remote, everything=everything)
        except (OSError, sqlite3.Error) as exc:
            log.warning("could not upload the study to %s: %s", mask_url(self.remote), exc)


_ACTIVE: BucketSync | None = None


def activate(mirror: BucketSync | None) -> None:
    """Make ``mirror`` the one :class:`StudySyncCallback` uploads through (None: none)."""
    global _ACTIVE
    _ACTIVE = mirror


def sync_callback() -> Any:
    """A Tune callback that uploads the study whenever Ray saves its experiment state.

    It pickles to nothing (Tune stores callbacks in ``tuner.pkl``) and finds the
    active mirror of this driver process at run time.
    """
    from raysweep._storage_callback import StudySyncCallback

    return StudySyncCallback()


def sync_active(*, force: bool = False) -> None:
    """Upload through the active mirror, if any (what the Tune callback calls)."""
    if _ACTIVE is not None:
        _ACTIVE.sync(force=force)
