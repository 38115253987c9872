"""Weights & Biases: training curves, configs and results where researchers already look.

Every line of jsaectl that touches W&B is here. ``wandb`` is an optional dependency
(``pip install "jsaectl[wandb]"``), imported only when ``--wandb PROJECT`` is given;
:func:`require` turns its absence into one error line before a command creates anything.

**train --wandb.** At every logging step the row that the store's ``history/`` gets is logged
at W&B step = jsaectl's history ``step`` (the optimiser step count, as the reference passes
``step=n_training_steps``), under the names of :data:`METRIC_NAMES`: the reference code's
(jugard99/jacobian-saes @ b73cadb, sae_trainer.py ``_build_train_step_log_dict``) where the
quantity is the same, jsaectl's own under ``jsaectl/`` for the rest. Dead latents are a
fraction in jsaectl's history and a count in the reference: the count (fraction × latents)
goes under the reference's name, the fraction under jsaectl's. The reference logs its Jacobian
sparsity only in evals, as ``jacobian_sparsity/jac_above_{t}`` for t in 0.005, 0.01, 0.02,
0.04 (count per token of |J| > t, averaged over tokens), but a closure bug makes every one of
them count |J| > 0.04: a reference run's ``jac_above_*`` keys all hold the 0.04 count.
jsaectl's ``j_count`` is the true count of |J| > 0.01 and is logged as
``jacobian_sparsity/jac_above_0.01``. The run's config is the store's config and provenance
(its attrs); the final metrics table becomes the run summary. The jsae store records the run
(``wandb``: id, url, project, entity, name) as soon as training starts, so that ``--resume``
continues the same run; under torchrun only rank 0 logs.

**jacobian / compare --wandb.** Their sparsity figures (and compare's other metrics) go into the
summary of the run the JSAE was trained in, when it was logged to the same project, or of a
new run; the top connections (jacobian) or the comparison (compare) as a ``wandb.Table``.

**Never at training's expense.** Every W&B call runs in one background thread fed by a queue,
so ``log`` returns at once and never waits on the network. If W&B fails (no API key, service
unreachable, quota), that is one warning and logging stops; training goes on and the store's
history keeps every metric. ``finish`` waits a bounded time. Without network, W&B's own
offline mode (``WANDB_MODE=offline``) writes the run to disk for ``wandb sync`` later.
wandb's own console lines are silenced (``WANDB_SILENT=true`` unless the user set it) and it
never captures the console: stderr keeps jsaectl's one-line conventions and stdout only the next stage's input.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import secrets
import string
import threading
import warnings
from collections.abc import Iterator
from typing import Any

from jsaectl.errors import JsaectlError, JsaectlWarning, first_line
from jsaectl.progress import Reporter

INSTALL_HINT = 'pip install "jsaectl[wandb]"'
FINISH_TIMEOUT = 60.0  # seconds the end of a command waits for W&B to flush
INTERRUPTED_TIMEOUT = 10.0  # … and the end of a failed or interrupted one
TRAINING_GOES_ON = "training goes on, the store's history keeps every metric"

# jsaectl's history/ key -> its W&B name, declared once. Reference names where the quantity
# is the reference's (the output SAE's twins end in 2, irregularly: l0_2); jsaectl/ otherwise.
METRIC_NAMES: dict[str, str] = {
    "tokens": "details/n_training_tokens",
    "lr": "details/current_learning_rate",
    "lam": "details/current_jacobian_coefficient",  # λ at that step (ramped during warm-up)
    "loss": "losses/overall_loss",
    "mse_in": "losses/mse_loss",  # mean over elements
    "mse_out": "losses/mse_loss2",
    "jac_l1": "losses/jacobian_loss",  # raw mean |J| over batch × k × k
    "ev_in": "metrics/explained_variance",  # per-token 1 − ‖v−v̂‖²/‖v−mean‖², averaged
    "ev_out": "metrics/explained_variance2",
    "l0_in": "metrics/l0",
    "l0_out": "metrics/l0_2",
    "j_count": "jacobian_sparsity/jac_above_0.01",  # the true count (see the module's docstring)
    "fvu_in": "jsaectl/fvu_in",
    "fvu_out": "jsaectl/fvu_out",
    "dead_in": "jsaectl/dead_in",  # fraction of latents
    "dead_out": "jsaectl/dead_out",
    "auxk": "jsaectl/auxk",
    "data_wait": "jsaectl/data_wait",
}
# The reference logs dead latents as a count: fraction × n_latents, under its names.
DEAD_COUNT_NAMES: dict[str, str] = {"dead_in": "sparsity/dead_features", "dead_out": "sparsity/dead_features2"}
STEP = "step"  # history's step is W&B's step, not a metric
OWN_PREFIX = "jsaectl/"
# Store attrs that say how far a run got rather than what it is: not part of the W&B config.
_NOT_CONFIG = ("complete", "checkpoint_step", "final_metrics", "tokens_per_second", "wandb")


# ---------------------------------------------------------------------------------------------
# The package


def require() -> Any:
    """wandb, imported (a one-line error with the install hint where it is not installed).
    Called before a command creates anything."""
    # wandb's own "wandb: …" lines (and its login prompt, which would read stdin from a
    # background thread) are off unless the user asks for them with WANDB_SILENT=false.
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb
    except ImportError:
        raise JsaectlError("--wandb needs the wandb package, which is not installed", hint=INSTALL_HINT) from None
    return wandb


def new_run_id() -> str:
    """A W&B run id chosen by jsaectl (8 of [a-z0-9], as wandb's own), so that the store can
    record it before W&B has answered."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def split_tags(tags: tuple[str, ...] | list[str]) -> list[str]:
    """``--wandb-tags`` values, each of which may be a comma list, as one list (in order, once each)."""
    out: list[str] = []
    for tag in (t.strip() for given in tags for t in given.split(",")):
        if tag and tag not in out:
            out.append(tag)
    return out


def describe_run(record: dict[str, Any] | None) -> str:
    """A run as the tables show it: its URL, or entity/project/id when it has none (offline)."""
    if not record or not record.get("id"):
        return "–"
    if record.get("url"):
        return str(record["url"])
    return "/".join(str(p) for p in (record.get("entity"), record.get("project"), record["id"]) if p)


# ---------------------------------------------------------------------------------------------
# Metric names


def metrics(row: dict[str, float], n_latents: int) -> dict[str, float]:
    """A history row under its W&B names (:data:`METRIC_NAMES`), without the step and without
    values that are not finite numbers (a metric not measured)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == STEP or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if key in DEAD_COUNT_NAMES:
            out[DEAD_COUNT_NAMES[key]] = int(round(value * n_latents))
        out[METRIC_NAMES.get(key, OWN_PREFIX + key)] = value
    return out


def final_summary(final: dict[str, float], tokens_per_second: float, steps: int, n_latents: int) -> dict[str, Any]:
    """The final training table (train's last logged batch; data wait over the whole run) as
    the run summary, under the same names as the curves."""
    return {**metrics(final, n_latents), OWN_PREFIX + "tokens_per_second": tokens_per_second, OWN_PREFIX + "steps": steps}


# ---------------------------------------------------------------------------------------------
# The run, driven from a background thread


class Tracker:
    """One W&B run. Every wandb call (init, log, summary, finish) runs in one background
    thread, in the order asked: ``log`` and ``summary`` only queue, and a failure in wandb ends
    the thread, not the caller. The failure is said once (a :class:`JsaectlWarning`, from the
    caller's thread at its next call) and later calls do nothing."""

    def __init__(self, record: dict[str, Any], config: dict[str, Any] | None = None, goes_on: str = TRAINING_GOES_ON,
                 after_step: int = 0, **init: Any) -> None:
        """``record``: the run (id, url, project, entity, name: what a store keeps); ``init``:
        wandb.init's other arguments (name, tags, job_type)."""
        self.record = dict(record)
        self._after_step = after_step  # tables go after this step (a training run's last, known offline too)
        self.error: str | None = None
        self.offline: bool | None = None
        self.sync_dir: str | None = None
        self._goes_on, self._warned, self._finished = goes_on, False, False
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        init = {"project": record["project"], "entity": record.get("entity"), "id": record["id"], "resume": "allow",
                "reinit": "create_new", **init}  # create_new: this run only, never a caller's own wandb.run
        self._thread = threading.Thread(target=self._work, args=(init, config), name="jsaectl-wandb", daemon=True)
        self._thread.start()

    # --- the caller's side: never blocks but in finish

    def log(self, values: dict[str, Any], step: int) -> None:
        if not self._stopped():
            self._queue.put(("log", values, step))

    def summary(self, values: dict[str, Any]) -> None:
        if not self._stopped():
            self._queue.put(("summary", values))

    def table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if not self._stopped():
            self._queue.put(("table", key, columns, rows))

    def finish(self, failed: bool = False, timeout: float = FINISH_TIMEOUT) -> dict[str, Any] | None:
        """Flush and close the run, waiting at most ``timeout`` seconds; the record to keep (None
        when W&B never started the run: there is nothing to point to)."""
        if not self._finished:
            self._finished = True
            self._queue.put(("finish", 1 if failed else 0))
            self._thread.join(timeout)
            if self._thread.is_alive() and self.error is None:  # said here: the work is done, nothing "goes on"
                self.error, self._warned = f"no answer within {timeout:.0f} s", True
                sync = f" (`wandb sync {self.sync_dir}` uploads what it had not sent)" if self.sync_dir else ""
                warnings.warn(JsaectlWarning(f"W&B did not finish within {timeout:.0f} s{sync}; the store keeps every "
                                             "figure it logs"), stacklevel=2)
        self._stopped()
        return dict(self.record) if self.offline is not None or self._thread.is_alive() else None

    def _stopped(self) -> bool:
        if self.error is not None and not self._warned:
            self._warned = True
            warnings.warn(JsaectlWarning(f"W&B logging failed: {self.error}; {self._goes_on}"), stacklevel=3)
        return self.error is not None or self._finished

    # --- the thread's side

    def _work(self, init: dict[str, Any], config: dict[str, Any] | None) -> None:
        run = None
        try:
            wandb = require()
            run = wandb.init(settings=wandb.Settings(console="off"), **init)  # silent: WANDB_SILENT (require)
            if config:
                run.config.update(config, allow_val_change=True)  # a resumed run may have an older one
            self._started(run)
            self._serve(run, wandb)
        except BaseException as e:  # noqa: BLE001  (W&B failing must never stop the command)
            self.error = first_line(e).rstrip(".")
            with contextlib.suppress(BaseException):
                if run is not None:
                    run.finish(exit_code=1)

    def _started(self, run: Any) -> None:
        self.offline = bool(run.offline)
        self.sync_dir = getattr(run.settings, "sync_dir", None)
        # run.url warns in offline mode, where there is none yet: it comes with `wandb sync`.
        self.record = {"id": run.id, "url": None if self.offline else run.url, "project": run.project,
                       "entity": run.entity or None, "name": run.name}

    def _serve(self, run: Any, wandb: Any) -> None:
        first = int(getattr(run, "starting_step", 0) or 0)  # a resumed run already holds the steps before
        table_step = max(first, self._after_step + 1)  # offline, W&B knows no step of the run it resumes
        while True:
            op, *args = self._queue.get()
            if op == "finish":
                run.finish(exit_code=args[0])
                return
            if op == "log" and args[1] >= first:
                run.log(args[0], step=args[1], commit=True)  # now: else W&B holds the row until the next step
            elif op == "summary":
                run.summary.update(args[0])
            elif op == "table":
                run.log({args[0]: wandb.Table(columns=args[1], data=args[2])}, step=max(table_step, run.step), commit=True)




def said_where(tracker: Tracker, reporter: Reporter) -> None:
    """Where the run is (after ``finish``): its URL, or how to upload an offline run."""
    if tracker.error is not None:
        return
    if tracker.offline and tracker.sync_dir:
        reporter.note(f"W&B run {describe_run(tracker.record)} is offline: upload it with `wandb sync {tracker.sync_dir}`")
    elif tracker.record.get("url"):
        reporter.note(f"W&B run: {tracker.record['url']}")


def run_config(meta: dict[str, Any], url: str) -> dict[str, Any]:
    """A store's config and provenance (its attrs, less how far it got) as a W&B run config."""
    return {"store": url, **{k: v for k, v in meta.items() if k not in _NOT_CONFIG}}


# ---------------------------------------------------------------------------------------------
# train


def start_training(cfg: Any, store: Any, reporter: Reporter) -> Tracker:
    """Start the W&B run of a training run (continue it, for a store that records one in the same
    project), recording it in the store at once so that a ``--resume`` after a kill finds it."""
    from jsaectl import store as st

    known = store.meta.get("wandb") or {}
    same = bool(known.get("id")) and known.get("project") == cfg.wandb and cfg.wandb_entity in (None, known.get("entity"))
    if known.get("id") and not same:
        reporter.note(f"the store's W&B run {describe_run(known)} is in another project or entity: "
                      f"logging to a new run in {cfg.wandb}")
    old = known if same else {}
    record = {"id": old.get("id") or new_run_id(), "url": old.get("url"), "project": cfg.wandb,
              "entity": cfg.wandb_entity or old.get("entity"),
              "name": cfg.wandb_name or old.get("name") or st.stem(store.url, "jsae")}
    store.update_meta(wandb=record)
    reporter.note(f"{'continuing' if same else 'logging to'} W&B run {record['project']}/{record['id']}")
    return Tracker(record, config=run_config(store.meta, store.url), name=record["name"],
                   tags=split_tags(cfg.wandb_tags) or None, job_type="train")


def replay(tracker: Tracker, store: Any) -> None:
    """Log again every row of a resumed store's history/ (train has cut it back to the
    checkpoint), so that the W&B run is whole even where the killed process's last records never
    left it (an offline run killed with SIGKILL loses its unflushed records). Steps W&B already
    has are dropped (see Tracker._serve)."""
    g = store.group.get("history")
    if g is None or STEP not in g:
        return
    columns = {key: g[key][...] for key in (STEP, *METRIC_NAMES) if key in g}
    for i in range(len(columns[STEP])):
        row = {key: float(values[i]) for key, values in columns.items()}
        tracker.log(metrics(row, int(store.meta["n_latents"])), step=int(row[STEP]))


@contextlib.contextmanager
def training_run(cfg: Any, store: Any, reporter: Reporter) -> Iterator[Tracker | None]:
    """The W&B run of a training run (None without ``--wandb``, or on a rank other than 0, which
    has no ``store``). At the end, however training ended, the run is finished (a bounded wait)
    and the store records what W&B answered (the URL, once it has one)."""
    if not cfg.wandb or store is None:
        yield None
        return
    tracker = start_training(cfg, store, reporter)
    failed = True
    try:
        yield tracker
        failed = False
    finally:
        record = tracker.finish(failed=failed, timeout=INTERRUPTED_TIMEOUT if failed else FINISH_TIMEOUT)
        try:  # (a run W&B never started is forgotten: a --resume makes a new one)
            if record != store.meta.get("wandb"):
                store.update_meta(wandb=record)
        except Exception:
            if not failed:
                raise  # (after a failure, the error that stopped training is the one to tell)
        said_where(tracker, reporter)


# ---------------------------------------------------------------------------------------------
# jacobian and compare


def analysis_run(project: str, jsae: Any, job: str, reporter: Reporter) -> Tracker:
    """The run the JSAE in store ``jsae`` was trained in, when it was logged to ``project``;
    else a new run with the JSAE's config (said in a note, either way)."""
    from jsaectl import store as st

    goes_on = f"the {job} results are complete without it"
    known = jsae.meta.get("wandb") or {}
    if known.get("id") and known.get("project") == project:
        reporter.note(f"adding the {job} results to the JSAE's W&B run {describe_run(known)}")
        return Tracker(known, goes_on=goes_on, after_step=int(jsae.meta.get("n_steps") or 0))
    run_id = new_run_id()
    why = "was not logged to W&B" if not known.get("id") else f"was logged to W&B project {known.get('project')}"
    reporter.note(f"the JSAE {why}: logging the {job} results to a new W&B run {project}/{run_id}")
    record = {"id": run_id, "url": None, "project": project, "entity": None, "name": f"{job} {st.stem(jsae.url, 'jsae')}"}
    return Tracker(record, config=run_config(jsae.meta, jsae.url), goes_on=goes_on, name=record["name"], job_type=job)


def _close(tracker: Tracker, reporter: Reporter) -> None:
    tracker.finish()
    said_where(tracker, reporter)


def _json_value(v: Any) -> Any:
    """A value as a W&B table cell or summary holds it (NaN, which JSON lacks, as None)."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def log_jacobian(project: str, result: Any, jsae: Any, reporter: Reporter) -> None:
    """A jacobian result into the W&B run of its JSAE (the open jsae store ``jsae``): the sparsity figures as summary values under
    ``jacobian/`` (compare's keys: ``j>0.01``, ``j>0.01_frac``, ``j>1rms``, ``j_mass90``,
    ``j_gini``, ``mean_abs_j``) and the top connections as a table."""
    from jsaectl.compare import sparsity_values
    from jsaectl.connections import FIELDS

    tracker = analysis_run(project, jsae, "jacobian", reporter)
    values = {**sparsity_values(result.sparsity), "tokens": result.n_tokens, "store": result.store}
    tracker.summary({f"jacobian/{k}": _json_value(v) for k, v in values.items()})
    tracker.table("jacobian/top_connections", list(FIELDS), [[getattr(c, n) for n in FIELDS] for c in result.top])
    _close(tracker, reporter)


def log_compare(project: str, results: list[Any], jsaes: list[Any], reporter: Reporter) -> None:
    """Compare's metrics of each JSAE (``jsaes``: their open stores, in the order of ``results``)
    into that JSAE's W&B run (summary values under ``compare/``, compare's own keys), each run
    also getting the whole comparison as a table."""
    keys = list(dict.fromkeys(k for r in results for k in r.values))
    columns = ["run", "store", *keys]
    rows = [[r.name, r.store, *[_json_value(r.values.get(k)) for k in keys]] for r in results]
    for r, jsae in zip(results, jsaes, strict=True):
        tracker = analysis_run(project, jsae, "compare", reporter)
        tracker.summary({f"compare/{k}": _json_value(v) for k, v in {**r.values, "acts": r.info.get("acts")}.items()})
        tracker.table("compare/table", columns, rows)
        _close(tracker, reporter)
