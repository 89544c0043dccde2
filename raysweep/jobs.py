"""Run a sweep as a Ray job on a cluster: submit, follow logs, stop.

``raysweep submit`` validates the config here, on the laptop, then hands Ray's
Jobs API a job whose entrypoint is ``raysweep run --config <file> ...``. The
user's working directory travels with the job (``runtime_env.working_dir``), so
the driver runs on the head node and the laptop can disconnect.

The Jobs API is the dashboard's HTTP server. raysweep's cluster files keep it on
the head's 127.0.0.1; the laptop reaches it through ``ray dashboard
clusters/aws.yaml``, an SSH port-forward to ``http://127.0.0.1:8265``. Nothing
here binds a port or suggests an address beyond 127.0.0.1.

Token authentication (``RAY_AUTH_MODE=token``): the token is read the way Ray
reads it (``RAY_AUTH_TOKEN``, then the file at ``RAY_AUTH_TOKEN_PATH``, then
``~/.ray/auth_token``) and sent as a bearer header, but only to a loopback or
``https://`` address, never in clear text across a network.

``ray`` is imported inside functions only; the pure helpers
(:func:`resolve_address`, :func:`build_job`) need no Ray.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from raysweep import constants
from raysweep.config import Config, get_dotted, load_config, read_yaml
from raysweep.errors import ConfigError, RaysweepError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from ray.job_submission import JobSubmissionClient

DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_ADDRESS = f"http://127.0.0.1:{DEFAULT_DASHBOARD_PORT}"
EXAMPLE_CLUSTER_FILE = "clusters/aws.yaml"

#: Never shipped with a job (gitignore patterns, relative to the working dir).
#: Ray also skips what the directory's .gitignore and .rayignore list.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git/",
    "/runs/",                 # local sweep outputs (training/search output_dir defaults)
    "data/**/cache/",         # decoded-image caches: rebuilt on each node
    "data/**/.cache/",
    "__pycache__/",
    "*.pyc",
    ".venv/",
    "venv/",
    ".pytest_cache/",
    ".mypy_cache/",
    "*.egg-info/",
)

#: Where relative output paths of a submitted sweep land on the head node. The
#: job's own working directory is a temporary copy Ray deletes, so outputs must
#: not stay relative to it. ``~`` is expanded on the head, not here.
DEFAULT_RESULTS_DIR = "~/raysweep"

#: Config keys holding output locations that submit pins under the results dir.
OUTPUT_KEYS: tuple[str, ...] = ("search.output_dir", "training.output_dir", "ray.storage_path")

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")

_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


# ---------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if not host:
        return False
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dashboard_port_from_cluster(cluster: str | Path) -> int:
    """The dashboard port a ``ray up`` cluster file starts its head with (default 8265).

    ``ray dashboard FILE`` forwards that port of the head to the same port on
    127.0.0.1 here, so it is also the local port to submit to.
    """
    try:
        data = read_yaml(cluster)
    except ConfigError as exc:
        raise UsageError(f"--cluster: {exc}") from None
    commands = data.get("head_start_ray_commands") or []
    if not isinstance(commands, list):
        raise UsageError(f"--cluster: {cluster}: head_start_ray_commands must be a list")
    for command in commands:
        m = re.search(r"--dashboard-port[= ](\d+)", str(command))
        if m:
            return int(m.group(1))
    return DEFAULT_DASHBOARD_PORT


def resolve_address(address: str | None = None, cluster: str | Path | None = None,
                    env: Mapping[str, str] | None = None) -> str:
    """The Jobs API URL to talk to.

    An explicit ``address`` wins; then ``--cluster FILE`` (127.0.0.1 and the
    file's dashboard port: the local end of ``ray dashboard FILE``); then
    ``RAY_ADDRESS`` when it is an ``http(s)://`` URL; then
    ``http://127.0.0.1:8265``.

    >>> resolve_address(env={})
    'http://127.0.0.1:8265'
    """
    env = os.environ if env is None else env
    if address:
        url = address.strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--address must be an http(s):// URL of the Ray dashboard, "
                             f"e.g. {DEFAULT_ADDRESS}, got {address!r}")
        return url
    if cluster is not None:
        return f"http://127.0.0.1:{dashboard_port_from_cluster(cluster)}"
    from_env = env.get(constants.ENV_RAY_ADDRESS, "").strip()
    if from_env.startswith(("http://", "https://")):
        return from_env.rstrip("/")
    return DEFAULT_ADDRESS


def tunnel_hint(cluster: str | Path | None) -> str:
    """How to open the SSH tunnel to the head's dashboard."""
    return (f"start the SSH tunnel to the head first: `ray dashboard {cluster or EXAMPLE_CLUSTER_FILE}` "
            f"(leave it running) and submit from another terminal")


# ---------------------------------------------------------------------------
# Token authentication
# ---------------------------------------------------------------------------


def read_auth_token(env: Mapping[str, str] | None = None) -> str | None:
    """The Ray auth token, looked up like Ray does; None when there is none."""
    env = os.environ if env is None else env
    token = env.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path_env = env.get("RAY_AUTH_TOKEN_PATH", "").strip()
    path = Path(path_env).expanduser() if path_env else Path.home() / ".ray" / "auth_token"
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if path_env:
            raise UsageError(f"RAY_AUTH_TOKEN_PATH={path_env}: file not found") from None
        return None
    except OSError as exc:
        raise UsageError(f"cannot read the Ray auth token {path}: {exc.strerror}") from None
    return token or None


def auth_headers(address: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``Authorization`` header for ``address``, or ``{}``.

    Sent when ``RAY_AUTH_MODE`` is ``token``, or unset and a token exists (as Ray
    2.60's ``ray start`` does), and only to a loopback or https address.
    """
    env = os.environ if env is None else env
    mode = env.get("RAY_AUTH_MODE", "").strip().lower()
    if mode and mode != "token":
        return {}
    parts = urlsplit(address)
    if parts.scheme != "https" and not is_loopback(parts.hostname):
        return {}
    token = read_auth_token(env)
    if not token:
        if mode == "token":
            raise UsageError("RAY_AUTH_MODE=token but no token found: put the cluster's token in "
                             "~/.ray/auth_token or point RAY_AUTH_TOKEN_PATH at it")
        return {}
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------
# The job: entrypoint and runtime_env (pure)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """What gets submitted: the shell entrypoint and the runtime_env."""

    entrypoint: str
    runtime_env: dict[str, Any]
    config: Config
    config_relpath: str
    working_dir: Path
    results_dir: str
    notes: tuple[str, ...] = field(default_factory=tuple)


def set_overrides(run_args: Sequence[str]) -> list[str]:
    """The ``--set key=value`` values among ``raysweep run`` options."""
    out: list[str] = []
    args = list(run_args)
    for i, arg in enumerate(args):
        if arg == "--set" and i + 1 < len(args):
            out.append(args[i + 1])
        elif arg.startswith("--set="):
            out.append(arg[len("--set="):])
    return out


def _shell_path(path: str) -> str:
    """Quote ``path`` for sh, expanding a leading ``~`` on the machine that runs it."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _is_excluded(relpath: str, working_dir: Path, excludes: Sequence[str]) -> bool:
    try:
        from ray._private.thirdparty.pathspec import PathSpec
    except ImportError:  # pragma: no cover - Ray internals moved; Ray will tell at upload
        return False
    lines = list(excludes)
    for name in (".gitignore", ".rayignore"):
        f = working_dir / name
        if f.is_file():
            lines.extend(f.read_text(encoding="utf-8", errors="replace").splitlines())
    return bool(PathSpec.from_lines("gitwildmatch", lines).match_file(relpath))


def build_job(
    config_path: str | Path,
    run_args: Sequence[str] = (),
    *,
    working_dir: str | Path = ".",
    excludes: Sequence[str] = (),
    results_dir: str = DEFAULT_RESULTS_DIR,
    env_vars: Mapping[str, str] | None = None,
) -> JobSpec:
    """Validate the config locally and build the job to submit.

    Raises :class:`~raysweep.errors.ConfigError` for a bad config (with the
    ``--set`` overrides among ``run_args`` applied) and
    :class:`~raysweep.errors.UsageError` when the config would not travel with
    the working directory.
    """
    wd = Path(working_dir).expanduser().resolve()
    if not wd.is_dir():
        raise UsageError(f"--working-dir {working_dir}: not a directory")
    cfg_file = Path(config_path).expanduser().resolve()
    if not cfg_file.is_file():
        raise ConfigError("file not found", path=str(config_path))
    try:
        rel = cfg_file.relative_to(wd).as_posix()
    except ValueError:
        raise UsageError(f"--config {config_path} is outside the working directory {wd}, which is what "
                         f"travels to the cluster; move it inside or pass --working-dir") from None
    all_excludes = (*DEFAULT_EXCLUDES, *excludes)
    if _is_excluded(rel, wd, all_excludes):
        raise UsageError(f"--config {config_path} is excluded from the upload (by raysweep's excludes, "
                         f".gitignore or .rayignore); copy it to configs/")

    overrides = set_overrides(run_args)
    cfg = load_config(str(config_path), overrides)

    notes: list[str] = []
    pinned: list[str] = []
    for key in OUTPUT_KEYS:
        if any(o.split("=", 1)[0].strip() == key for o in overrides):
            continue
        value = get_dotted(cfg.data, key, None)
        if not isinstance(value, str) or "://" in value or value.startswith(("/", "~")):
            continue
        target = f"{results_dir.rstrip('/')}/{value}"
        pinned.append("--set " + shlex.quote(f"{key}=") + _shell_path(target))
        if key == "ray.storage_path":
            notes.append(f"ray.storage_path is a local path ({target} on the head): fine for a one-node "
                         f"cluster; with workers set it to a bucket (s3://..., gs://...) that every node "
                         f"can write (docs/cluster.md)")
    # The driver joins the job's own cluster (RAY_ADDRESS is set by Ray), whatever
    # ray.address says in the file, unless the run options name one.
    address = [] if any(a == "--address" or a.startswith("--address=") for a in run_args) else ["--address", "auto"]
    entrypoint = " ".join(["raysweep", "run", "--config", shlex.quote(rel), *address, *pinned,
                           *(shlex.quote(a) for a in run_args)])
    runtime_env: dict[str, Any] = {"working_dir": str(wd), "excludes": list(all_excludes)}
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return JobSpec(entrypoint=entrypoint, runtime_env=runtime_env, config=cfg, config_relpath=rel,
                   working_dir=wd, results_dir=results_dir, notes=tuple(notes))


# ---------------------------------------------------------------------------
# Talking to the Jobs API
# ---------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _translate(exc: Exception, address: str, cluster: str | Path | None) -> RaysweepError:
    """One line for whatever the Jobs SDK raised."""
    from ray.exceptions import AuthenticationError

    if isinstance(exc, AuthenticationError):
        return RaysweepError(
            f"the Ray cluster at {address} rejected the request (token authentication): use the "
            f"cluster's token: ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")
    if isinstance(exc, ConnectionError):
        return RaysweepError(f"cannot reach the Ray dashboard at {address}: {tunnel_hint(cluster)}")
    return RaysweepError(f"Ray Jobs API at {address}: {_first_line(exc)}")


def connect(address: str | None = None, cluster: str | Path | None = None) -> "JobSubmissionClient":
    """A :class:`ray.job_submission.JobSubmissionClient` for the resolved address.

    Connection refused and authentication failures become one-line
    :class:`~raysweep.errors.RaysweepError`.
    """
    url = resolve_address(address, cluster)
    headers = auth_headers(url)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RaysweepError(f"the Ray Jobs SDK needs ray[default]: pip install 'ray[default]' "
                            f"({_first_line(exc)})") from None
    try:
        return JobSubmissionClient(url, headers=headers or None)
    except Exception as exc:  # the SDK raises ConnectionError/RuntimeError/AuthenticationError
        raise _translate(exc, url, cluster) from None


@dataclass(frozen=True)
class Submitted:
    """A submitted sweep."""

    job_id: str
    address: str
    spec: JobSpec


def submit(
    config_path: str | Path,
    run_args: Sequence[str] = (),
    *,
    address: str | None = None,
    cluster: str | Path | None = None,
    working_dir: str | Path = ".",
    excludes: Sequence[str] = (),
    results_dir: str = DEFAULT_RESULTS_DIR,
    env_vars: Mapping[str, str] | None = None,
) -> Submitted:
    """Validate ``config_path`` locally, then submit ``raysweep run`` as a Ray job.

    Nothing is contacted before the config validated: a typo exits 2 without
    touching the cluster.
    """
    spec = build_job(config_path, run_args, working_dir=working_dir, excludes=excludes,
                     results_dir=results_dir, env_vars=env_vars)
    url = resolve_address(address, cluster)
    client = connect(url, cluster)
    metadata = {"raysweep_config": spec.config_relpath,
                "raysweep_study": str(spec.config.search.study_name)}
    try:
        job_id = client.submit_job(entrypoint=spec.entrypoint, runtime_env=spec.runtime_env,
                                   metadata=metadata)
    except Exception as exc:
        raise _translate(exc, url, cluster) from None
    return Submitted(job_id=job_id, address=url, spec=spec)


def job_status(job_id: str, *, address: str | None = None, cluster: str | Path | None = None) -> str:
    """The job's state: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    url = resolve_address(address, cluster)
    client = connect(url, cluster)
    try:
        return str(client.get_job_status(job_id).value)
    except Exception as exc:
        raise _job_error(exc, job_id, url, cluster) from None


def _job_error(exc: Exception, job_id: str, address: str, cluster: str | Path | None) -> RaysweepError:
    if "does not exist" in str(exc) or "404" in str(exc)[:200]:
        return UsageError(f"no job {job_id!r} on the Ray cluster at {address}")
    return _translate(exc, address, cluster)


def stop(job_id: str, *, address: str | None = None, cluster: str | Path | None = None) -> bool:
    """Ask Ray to stop the job; False when it had already finished."""
    url = resolve_address(address, cluster)
    client = connect(url, cluster)
    try:
        return bool(client.stop_job(job_id))
    except Exception as exc:
        raise _job_error(exc, job_id, url, cluster) from None


def logs(
    job_id: str,
    *,
    follow: bool = False,
    address: str | None = None,
    cluster: str | Path | None = None,
    echo: Callable[[str], None] = print,
    poll_s: float = 1.0,
) -> str:
    """Write the job's logs through ``echo``; with ``follow``, until the job ends.

    Returns the job's state when done (for ``follow``, a terminal one). Following
    polls the Jobs API, so it survives a flaky tunnel; Ctrl-C stops following,
    not the job.
    """
    url = resolve_address(address, cluster)
    client = connect(url, cluster)
    shown = 0
    try:
        while True:
            status = str(client.get_job_status(job_id).value)
            text = client.get_job_logs(job_id)
            if len(text) > shown:
                echo(text[shown:])
                shown = len(text)
            if not follow or status in TERMINAL_STATES:
                if follow:  # the last lines may land after the state changed
                    text = client.get_job_logs(job_id)
                    if len(text) > shown:
                        echo(text[shown:])
                return status
            time.sleep(poll_s)
    except Exception as exc:
        raise _job_error(exc, job_id, url, cluster) from None


__all__ = [
    "DEFAULT_ADDRESS", "DEFAULT_EXCLUDES", "DEFAULT_RESULTS_DIR", "JobSpec", "Submitted",
    "auth_headers", "build_job", "connect", "dashboard_port_from_cluster", "is_loopback",
    "job_status", "logs", "read_auth_token", "resolve_address", "set_overrides", "stop", "submit",
    "tunnel_hint",
]
