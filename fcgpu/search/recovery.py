"""What a worker does when the study's storage goes away, or a trial loses its worker.

* **A lost connection** (the database server restarts, the network drops): the worker
  stops the trial it runs, waits for the storage with bounded retries
  (:class:`StorageWait`: every 0.5 s at first, backing off to every 10 s, for up to
  ``--storage-wait`` seconds in all, 300 by default), and prints one line when it loses
  the storage and one when it answers again. Then it settles the trial
  (:func:`settle`): a trial whose training had finished is told its result (nothing
  completed is lost); one cut short is marked FAIL (``storage lost mid-trial: ...``)
  and retried. After the bound, :class:`~fcgpu.errors.StudyStorageError`: one line,
  and the study stays as it was (the trial cut short stays RUNNING until a worker
  finds its heartbeat stale, marks it FAIL and retries it).
* **A lost worker** (SIGKILL, a machine that died): its trial's heartbeat goes stale,
  and the next worker to start a trial after the grace period marks it FAIL through
  Optuna's heartbeat check, whose callback (:class:`LostTrials`) retries it.

A retry is a new trial with the lost one's parameters (Optuna's
``RetryHeartbeatStaleTrialCallback``, formerly ``RetryFailedTrialCallback``), queued as
WAITING: the next trial any worker starts runs it. A trial is retried at most
:data:`MAX_RETRY` times. A lost trial of this command gives its place in the trial
budget back, and its retry takes it again, so the command still finishes its budget;
a worker with no budget left stays while trials of its command run elsewhere, to fail
and retry them should their worker be lost (:func:`drain`).
"""
from __future__ import annotations

import copy
import time

from ..errors import StudyStorageError
from .objective import TrialAbandoned, TrialFailed
from .storage import mask_url, short_error, transient_cause
from .summary import describe_trial, say

MAX_RETRY = 3           # retries of one lost trial (its parameters may be what kills workers)
FIRST_DELAY, MAX_DELAY = 0.5, 10.0   # seconds between tries while the storage is away


class StorageWait:
    """Bounded waiting for a storage that went away: ``lost(exc)`` returns once
    ``probe()`` answers, or raises :class:`~fcgpu.errors.StudyStorageError` once
    ``bound`` seconds have passed since the storage was first lost. The clock restarts
    (:meth:`ok`) only once a trial ran through, or a round of :func:`drain` worked: a
    storage that answers the probe but keeps failing the search's calls counts as lost."""

    def __init__(self, url, bound, probe, out, tag="", clock=time.monotonic, sleep=time.sleep):
        self.url, self.bound, self.probe, self.out, self.tag = url, float(bound), probe, out, tag
        self.clock, self.sleep = clock, sleep
        self.since = None

    def ok(self):
        self.since = None

    def lost(self, exc):
        if self.since is None:
            self.since = self.clock()
            self._say("lost the study storage %s: %s; waiting up to %g s for it "
                      "(--storage-wait)" % (mask_url(self.url), short_error(exc, self.url),
                                            self.bound))
        delay = FIRST_DELAY
        while True:
            left = self.since + self.bound - self.clock()
            if left <= 0:
                raise StudyStorageError("lost the study storage %s: %s (gave up after %g s; "
                                        "--storage-wait)" % (mask_url(self.url),
                                                             short_error(exc, self.url),
                                                             self.bound),
                                        url=mask_url(self.url))
            self.sleep(min(delay, left))
            delay = min(2 * delay, MAX_DELAY)
            try:
                self.probe()
            except Exception as again:
                if transient_cause(again) is None:
                    raise
                exc = transient_cause(again)
                continue
            self._say("the study storage answers again (%.1f s after it was lost)"
                      % (self.clock() - self.since))
            return

    def call(self, fn):
        """``fn()``, waiting for the storage (:meth:`lost`) and calling again each time
        it fails on a lost connection."""
        while True:
            try:
                return fn()
            except Exception as exc:
                cause = transient_cause(exc)
                if cause is None:
                    raise
                self.lost(cause)

    def _say(self, line):
        say(self.out, self.tag + line)


def retry_callback(max_retry=MAX_RETRY):
    """Optuna's callback that queues a lost trial again (renamed in Optuna 4.9)."""
    import optuna
    cls = (getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
           or optuna.storages.RetryFailedTrialCallback)
    return cls(max_retry=max_retry)


def find_trial(study, number):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def retry_of(trial):
    """The number of the lost trial that ``trial`` retries (its first one), or None."""
    return trial.system_attrs.get("failed_trial")


class LostTrials:
    """Fails over a lost trial: retries it and gives its place in this command's trial
    budget back. Called by Optuna for each trial it marks FAIL after a stale heartbeat
    (the storage's stale-trial callback), and by :func:`settle` for a trial cut short by
    a lost connection. ``run_id`` and ``tickets`` are the command's."""

    def __init__(self, out, tag="", run_id=None, tickets=None, max_retry=MAX_RETRY):
        self.out, self.tag, self.run_id, self.tickets = out, tag, run_id, tickets
        self.max_retry = max_retry

    def __call__(self, study, trial):
        self.retry(study, trial, "trial %d of worker %s sent no heartbeat for too long: "
                   "marked FAIL" % (trial.number, trial.user_attrs.get("worker", "?")),
                   ours=self.run_id is not None and trial.user_attrs.get("run") == self.run_id)

    def retry(self, study, trial, line, ours):
        """Queue a retry of the FAIL ``trial`` (its reason is not copied), print ``line``
        with where the retry went, and give a trial of the budget back if it was ours."""
        template = copy.deepcopy(trial)
        template.user_attrs = {k: v for k, v in trial.user_attrs.items() if k != "fail_reason"}
        retry_callback(self.max_retry)(study, template)
        again = [t.number for t in study.get_trials(deepcopy=False)
                 if (t.system_attrs.get("retry_history") or [None])[-1] == trial.number]
        if again:
            line += "; retried as trial %d" % again[0]
        else:
            line += "; not retried (lost %d times)" % (len(trial.system_attrs.get(
                "retry_history", [])) + 1)
        if ours and self.tickets is not None:
            self.tickets.release()
        say(self.out, self.tag + line)


class Tracked:
    """The objective, remembering the trial it runs and how it ended (``outcome``:
    ``(TrialState, value)``, None while it runs or when it was cut short)."""

    def __init__(self, objective):
        self.objective = objective
        self.reset()

    def reset(self):
        self.trial = self.outcome = None

    def __call__(self, trial):
        import optuna
        from optuna.trial import TrialState
        self.trial, self.outcome = trial, None
        try:
            value = self.objective(trial)
        except optuna.TrialPruned:
            self.outcome = (TrialState.PRUNED, None)
            raise
        except TrialFailed:
            self.outcome = (TrialState.FAIL, None)
            raise
        self.outcome = (TrialState.COMPLETE, value)
        return value


def run_trial(study, tracked, callbacks, wait, lost):
    """One trial through Optuna's ``optimize``, surviving a storage that goes away
    under it. Returns whether a trial took this ticket (False: none ran)."""
    tracked.reset()
    try:
        study.optimize(tracked, n_trials=1, catch=(TrialFailed,), callbacks=callbacks,
                       gc_after_trial=True)
    except TrialAbandoned as exc:
        cause = exc.cause
    except Exception as exc:
        cause = transient_cause(exc)
        if cause is None:
            raise
    else:
        wait.ok()
        return True
    if transient_cause(cause) is not None:
        wait.lost(transient_cause(cause))
    return wait.call(lambda: settle(study, tracked, lost, cause, wait.url))


def settle(study, tracked, lost, cause, url=None):
    """After a trial's storage came back: tell the trial its result if its training
    finished; mark it FAIL and retry it if it was cut short; print what became of it.
    Returns whether a trial took the ticket."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    trial = tracked.trial
    if trial is None:
        return False
    frozen = find_trial(study, trial.number)
    note = ""
    if frozen.state == TrialState.RUNNING and tracked.outcome is None:
        reason = "storage lost mid-trial: %s" % short_error(cause, url)
        try:
            trial.set_user_attr("fail_reason", reason)
            frozen = study.tell(trial, state=TrialState.FAIL)
        except (ValueError, UpdateFinishedTrialError):  # another worker failed it first
            frozen = find_trial(study, trial.number)
        else:
            lost.retry(study, frozen, describe_trial(frozen), ours=True)
            return True
    elif frozen.state == TrialState.RUNNING:
        state, value = tracked.outcome
        try:
            frozen = study.tell(trial, value, state=state)
        except (ValueError, UpdateFinishedTrialError):
            frozen = find_trial(study, trial.number)
    if tracked.outcome is None or frozen.state != tracked.outcome[0]:
        note = " (marked by another worker while this one was away from the storage)"
    say(lost.out, lost.tag + describe_trial(frozen) + note)
    return True


def run_still_running(study, run_id):
    """Whether trials of this command (``run_id``) run on other workers."""
    from optuna.trial import TrialState
    return any(t.user_attrs.get("run") == run_id
               for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def drain(study, run_id, wait, poll):
    """A worker with no trial of the budget left: wait ``poll`` seconds while trials
    of this command run elsewhere, and fail those whose heartbeat went stale (their
    places in the budget come back through :class:`LostTrials`). Returns False once
    none runs."""
    import optuna
    if not wait.call(lambda: run_still_running(study, run_id)):
        return False
    time.sleep(poll)
    wait.call(lambda: optuna.storages.fail_stale_trials(study))
    wait.ok()
    return True
