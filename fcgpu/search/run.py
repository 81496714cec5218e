"""Running a search: one worker's loop over trials, a worker process's entry point,
and the command as a whole (study, workers, summary, report)."""
from __future__ import annotations

import signal
import sys
import threading
import time

from ..errors import StudyStorageError
from .objective import load_search_data, make_objective, prefetch_data
from .recovery import LostTrials, StorageWait, Tracked, drain, run_trial
from .report import write_report
from .settings import SearchSettings
from .storage import make_pruner, make_sampler, mask_url, open_storage, open_study, quiet_optuna, \
    storage_failures_named
from .summary import progress_callback, say, summarize
from .workers import STORAGE_GAVE_UP, LocalTickets, TermAsInterrupt, Tickets, pin_this_process, \
    plan_workers, spawn_workers, whole_lines


def run_worker(settings, index=0, tickets=None, data=None, out=None, pruner=None, tag=""):
    """Run trials of the study until the budget (tickets), the deadline or an interrupt
    ends them; a storage that goes away is waited for (``settings.storage_wait``), and
    trials lost to it or to a dead worker are retried (:mod:`~fcgpu.search.recovery`).
    Returns the number of trials this worker ran."""
    out = out or sys.stdout
    quiet_optuna(settings.verbose)
    if tickets is None:
        tickets = LocalTickets(settings.trial_budget())
    lost = LostTrials(out, tag, settings.run_id, tickets)
    storage = open_storage(settings.storage, settings.heartbeat, settings.grace,
                           stale_callback=lost)
    seed = None if settings.seed is None else int(settings.seed) + index
    study = open_study(storage, settings.study, sampler=make_sampler(settings.sampler, seed),
                       pruner=pruner or make_pruner(settings.pruner, settings.pruner_warmup),
                       url=settings.storage)
    if data is None:
        data = load_search_data(settings)
    tracked = Tracked(make_objective(settings, data, out=out))
    wait = StorageWait(settings.storage, settings.storage_wait, out=out, tag=tag,
                       probe=lambda: storage.get_study_id_from_name(settings.study))
    callbacks = [progress_callback(out, tag)]
    ran = 0
    with TermAsInterrupt(), storage_failures_named(settings.storage):
        while settings.deadline is None or time.time() < settings.deadline:
            if tickets.claim():
                if run_trial(study, tracked, callbacks, wait, lost):
                    ran += 1
                else:
                    tickets.release()
            elif not drain(study, settings.run_id, wait, poll=min(settings.heartbeat, 5)):
                break
    return ran


def worker_main(spec_path, index, tickets_path, out=None):
    """Entry point of a worker process (``fcgpu search --worker SPEC``). A worker that
    gives up waiting for the storage says why on ``out`` and exits with
    ``STORAGE_GAVE_UP``; the command then ends with one line."""
    pin_this_process()
    whole_lines(sys.stdout)
    if threading.current_thread() is threading.main_thread():
        # a shell's background job starts with SIGINT ignored: take Ctrl-C seriously
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(spec_path) as f:
        settings = SearchSettings.from_json(f.read())
    tickets = Tickets(tickets_path, settings.trial_budget())
    tag = "[w%d] " % index
    try:
        run_worker(settings, index=index, tickets=tickets, out=out, tag=tag)
    except StudyStorageError as exc:
        say(out or sys.stdout, tag + "gave up: %s" % exc)
        return STORAGE_GAVE_UP
    return 0


def run_search(settings, workers=None, data=None, out=None, pruner=None, report=None):
    """Open (or create) the study, run this command's trials on ``workers`` processes
    (in this process when there is one), print the summary and the best trial's
    ``fcgpu train`` command, and write the report. Returns ``(study, exit_code)``."""
    out = out or sys.stdout
    quiet_optuna(settings.verbose)
    if settings.timeout is not None and settings.deadline is None:
        settings.deadline = time.time() + settings.timeout
    storage = open_storage(settings.storage, settings.heartbeat, settings.grace)
    study = open_study(storage, settings.study, url=settings.storage)
    with storage_failures_named(settings.storage):
        before = len(study.get_trials(deepcopy=False))
    budget = settings.trial_budget()
    print("study %r in %s: %d trial%s so far; this run: %s trial%s, %d epoch%s on %d images"
          % (settings.study, mask_url(settings.storage), before, "" if before == 1 else "s",
             "unlimited" if budget is None else budget, "" if budget == 1 else "s",
             settings.epochs, "" if settings.epochs == 1 else "s", settings.num_train),
          file=out, flush=True)
    code = 0
    if budget != 0:
        k, envs, descs = plan_workers(workers, settings.backend)
        if k == 1:
            run_worker(settings, data=data, out=out, pruner=pruner)
        else:
            if data is not None or pruner is not None:
                raise ValueError("data= and pruner= only apply to a single in-process worker")
            prefetch_data(settings)
            codes = spawn_workers(settings, envs, descs, out)
            if STORAGE_GAVE_UP in codes:
                raise StudyStorageError("lost the study storage %s: worker %d gave up on it "
                                        "(its line above says why); rerun the command to "
                                        "resume the study" % (mask_url(settings.storage),
                                                              codes.index(STORAGE_GAVE_UP)),
                                        url=mask_url(settings.storage))
            if any(c != 0 for c in codes):
                code = 1
    study = open_study(storage, settings.study, url=settings.storage)
    with storage_failures_named(settings.storage):
        summarize(study, out=out, run_id=settings.run_id, storage_url=settings.storage)
        if report:
            path = write_report(study, report, storage_url=settings.storage)
            print("report: %s" % path, file=out, flush=True)
    return study, code
