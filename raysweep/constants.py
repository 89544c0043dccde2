"""File names, result columns and environment variables, in one place.

Writers and readers of the study directory import these names, so an output
written by one version of raysweep stays readable by the next.
"""
from __future__ import annotations

# --- where things live ----------------------------------------------------
DEFAULT_STUDIES_DIR = "runs/optuna_studies"   # <dir>/<study_name>/...
DEFAULT_RAY_STORAGE = "runs/ray"              # Ray experiment dirs
STUDY_DB_FILE = "study.db"                    # default SQLite study storage
BEST_CONFIG_FILE = "best_config.yaml"
TRIALS_FILE = "trials.parquet"
CURVES_FILE = "curves.parquet"
CURVES_LOG_FILE = "curves.jsonl"              # append-only, survives a killed driver
SUMMARY_FILE = "summary.txt"
SWEEP_FILE = "sweep.json"                     # how the sweep was started (config path, storage)
PLOTS_DIR = "plots"
REPORT_FILE = "report.html"

# --- trials.parquet: one row per Optuna trial ----------------------------
# params are stored one column each, prefixed with PARAM_PREFIX ("param.optimizer.lr").
PARAM_PREFIX = "param."
TRIAL_COLUMNS = (
    "number",          # Optuna trial number (int)
    "state",           # COMPLETE | PRUNED | FAIL | RUNNING | WAITING
    "value",           # the objective (search.objective of the metric), None if none
    "final_metric",    # the metric's last reported value
    "best_metric",     # the metric's best value over epochs (by direction)
    "epochs",          # number of epochs reported
    "seconds",         # wall time from trial start to end
    "start_time",      # datetime (UTC)
    "end_time",        # datetime (UTC) or None
    "node",            # host/IP of the node that ran the trial
    "worker",          # "<node>:<pid>" of the actor process
    "ray_trial_id",    # Ray Tune trial id
    "error",           # error message for FAIL trials
)

# --- curves.parquet: one row per trial-epoch ------------------------------
# every numeric metric the trial reported becomes a column of its own.
CURVE_COLUMNS = ("number", "epoch", "time", "node")
# with cross-validation, per-fold values are columns named "<metric>.fold_<k>"
FOLD_COLUMN_TEMPLATE = "{metric}.fold_{fold}"

# --- Optuna user/system attributes written by raysweep --------------------
ATTR_RAY_TRIAL_ID = "raysweep:ray_trial_id"
ATTR_NODE = "raysweep:node"
ATTR_WORKER = "raysweep:worker"
ATTR_ERROR = "raysweep:error"
ATTR_INTERRUPTED = "raysweep:interrupted"     # FAIL set by resume repair; not counted
ATTR_BASELINE = "raysweep:baseline"
ATTR_EPOCHS = "raysweep:epochs"
ATTR_FINAL = "raysweep:final_metric"
ATTR_BEST = "raysweep:best_metric"

# --- keys raysweep puts into a Ray trial's config -------------------------
TRIAL_NUMBER_KEY = "raysweep_trial_number"
TRIAL_PARAMS_KEY = "raysweep_params"

#: finished trials after which TPE's asks are computed ahead in a helper process
#: (raysweep.presampler); below it an ask costs about a millisecond
PRESAMPLE_AFTER = 200

# --- environment ----------------------------------------------------------
ENV_DEBUG = "RAYSWEEP_DEBUG"                   # "1": show tracebacks
ENV_RAY_ADDRESS = "RAY_ADDRESS"
#: Ray's setting for modules its worker processes import before taking work
ENV_RAY_PRELOAD = "RAY_preload_python_modules"
#: what a trial's worker imports anyway: preloaded in the workers of a local Ray
WORKER_PRELOAD_MODULES = "ray.tune,raysweep.trial"
