"""One ``fcgpu bench`` run of the suites: each suite in its own pytest process, and
``results.json`` rewritten after every piece, so that a run cut short (a deadline, a
crash) keeps what it measured. The command's flags and phases live in
:mod:`fcgpu.cli.bench`; what goes into ``results.json``, in :mod:`fcgpu.bench.results`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .. import backend
from ..errors import ConfigError, DataError

__all__ = ["Run", "make_dir", "load_json", "from_partial"]


def make_dir(path, flag="--out"):
    """``path`` as a folder to write into (made if missing), else a ConfigError naming
    ``flag``."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError("%s %s: cannot make the folder (%s)"
                          % (flag, path, exc.strerror or exc)) from None


class Run:
    """One ``fcgpu bench`` run: what it measured so far, and results.json rewritten
    after each piece, so that a run cut short keeps what it measured."""

    def __init__(self, args):
        from ..bench.machine import machine_info
        self.args = args
        self.t0 = time.time()
        self.deadline = self.t0 + args.deadline if args.deadline else None
        self.out = os.path.abspath(args.out)
        self.raw_dir = os.path.join(self.out, "raw")
        make_dir(self.raw_dir)
        self.path = os.path.join(self.out, "results.json")
        self.machine = machine_info()
        self.raw_list, self.raw_paths, self.exps, self.prof = [], [], {}, {}
        self.not_run, self.failed, self.prior_cut, self.rc = {}, {}, [], 0
        self.n_prior, self.prior_exps = 0, set()  # what --part rest kept of the headline

    def load_headline(self):
        """--part rest: keep what a --part headline run left in --out."""
        try:
            with open(self.path) as f:
                prior = json.load(f)
        except (OSError, ValueError) as exc:
            raise DataError("--part rest adds to a --part headline run in the same --out, "
                            "and %s cannot be read (%s)" % (self.path, exc)) from None
        st = prior.get("settings") if isinstance(prior, dict) else None
        if not isinstance(st, dict) or st.get("part") != "headline":
            raise ConfigError("--part rest adds to a --part headline run in the same --out; "
                              "%s is from --part %s"
                              % (self.path, (st or {}).get("part", "all")))
        if st.get("matmul_precision", "highest") != backend.get_matmul_precision():
            raise ConfigError("--part rest adds to the --part headline run in %s, which ran "
                              "with matmul precision %s, not %s: give the same "
                              "--matmul-precision" % (self.out, st.get("matmul_precision",
                                                                       "highest"),
                                                      backend.get_matmul_precision()))
        for rel in st.get("raw") or []:
            p = os.path.join(self.out, rel)
            raw = from_partial(p) if p.endswith(".jsonl") else load_json(p)
            if raw is not None:
                self.raw_list.append(raw)
                self.raw_paths.append(p)
        if "course_wall" in (prior.get("experiments") or {}):
            self.exps["course_wall"] = prior["experiments"]["course_wall"]
            self.prior_exps.add("course_wall")
        self.n_prior = len(self.raw_list)
        self.prior_cut = ["headline: " + c for c in st.get("cut") or []]
        self.failed.update(st.get("suites_failed") or {})

    def write(self, final=False):
        from ..atomic import atomic_write_bytes
        from ..bench.results import build_results, cut_reasons
        args = self.args
        mine = {k: v for k, v in self.exps.items() if k not in self.prior_exps}
        cut = self.prior_cut + cut_reasons(self.raw_list[self.n_prior:], mine, self.not_run)
        results = build_results(self.raw_list, experiments=self.exps, machine=self.machine,
                                settings={
            "command": " ".join(sys.argv), "only": args.only, "part": args.part,
            "time_to_accuracy": args.time_to_accuracy, "course_wall": args.course_wall,
            "deadline_s": args.deadline, "matmul_precision": backend.get_matmul_precision(),
            "raw": [os.path.relpath(p, self.out) for p in self.raw_paths],
            "complete": bool(final and not cut and not self.failed), "cut": cut,
            "suites_not_run": self.not_run, "suites_failed": self.failed},
            profile=self.prof.get("profile"))
        notes = results["summary_notes"]
        for key, note in notes.items():
            for suite, why in dict(self.not_run, **self.failed).items():
                base = suite.replace("headline-", "").replace("_partial", "")
                if note == "the %s suite did not run" % ("kernel" if base == "kernels"
                                                         else "training"):
                    notes[key] = note + ": " + why
        atomic_write_bytes(json.dumps(results, indent=1).encode(), self.path)
        return results

    def suite(self, name, file, part, deadline, hard_stop):
        """One suite in its own pytest run; ``deadline``/``hard_stop``: Unix times (or
        None) by which cases must have started, and at which the run is stopped."""
        key = "headline-" + name if part == "headline" else name
        raw_path = os.path.join(self.raw_dir, "%s.json" % key)
        partial = os.path.join(self.raw_dir, "%s.partial.jsonl" % key)
        for p in (raw_path, partial):
            if os.path.exists(p):
                os.remove(p)
        cmd = self._suite_cmd(file, raw_path, partial, part, deadline)
        timeout = None if hard_stop is None else max(30.0, hard_stop - time.time())
        print("fcgpu bench: %s" % " ".join(cmd), file=sys.stderr, flush=True)
        from ..bench import child
        try:
            code = subprocess.call(cmd, env=child.env(), cwd=os.path.dirname(file),
                                   timeout=timeout)
        except subprocess.TimeoutExpired:  # a hard stop cuts the run; it is no error
            code = None
            self.not_run[key] = "stopped at the run's --deadline"
        if code not in (None, 0, 5):
            self.rc = code
            self.failed[key] = "pytest exited %d (what it measured is kept)" % code
            print("fcgpu bench: the %s suite's pytest exited with %d; keeping what was "
                  "measured" % (key, code), file=sys.stderr)
        self._keep(key, raw_path, partial, code)
        self.write()

    def _suite_cmd(self, file, raw_path, partial, part, deadline):
        args = self.args
        cmd = [sys.executable, "-m", "pytest", file, "-p", "no:cacheprovider", "-q",
               "-o", "addopts=", "--benchmark-json", raw_path, "--benchmark-columns",
               "median,rounds", "--benchmark-sort", "name", "--fcgpu-partial", partial,
               "--fcgpu-part", part]
        cmd += ["--fcgpu-quick"] if args.quick else []
        cmd += ["--fcgpu-full"] if args.full else []
        cmd += ["--fcgpu-variants", args.variants] if args.variants else []
        cmd += ["--fcgpu-budget", str(args.budget)] if args.budget else []
        cmd += ["--fcgpu-deadline", "%.3f" % deadline] if deadline else []
        if args.pytest_args:
            import shlex
            cmd += shlex.split(args.pytest_args)
        return cmd

    def _keep(self, key, raw_path, partial, code):
        raw = load_json(raw_path)
        if raw is not None:
            self.raw_list.append(raw)
            self.raw_paths.append(raw_path)
            return
        # no JSON: stopped or crashed before pytest-benchmark wrote it, or every case
        # skipped (pytest-benchmark then saves nothing); the per-case lines remain
        raw = from_partial(partial)
        if raw is not None:
            self.raw_list.append(raw)
            self.raw_paths.append(partial)
            if code is None:
                self.not_run[key] += "; the cases it finished are kept"
        elif code is None:
            self.not_run[key] = "stopped at the run's --deadline before finishing a case"
        elif code not in (0, 5):
            self.failed[key] = "pytest wrote no results (exit %d)" % code


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def from_partial(path):
    """A pytest-benchmark-like dict from the per-case lines of ``--fcgpu-partial``."""
    try:
        with open(path) as f:
            lines = [json.loads(ln) for ln in f if ln.strip()]
    except (OSError, ValueError):
        return None
    if not lines:
        return None
    last = lines[-1]
    return {"benchmarks": [{"name": "partial", "extra_info": ln["case"]} for ln in lines
                           if ln["case"].get("measurements")],
            "fcgpu": {"variant_skips": last.get("variant_skips", {}),
                      "workers": last.get("workers", {}), "settings": last.get("settings", {}),
                      "case_skips": [ln["case"] for ln in lines
                                     if not ln["case"].get("measurements")],
                      "machine": None}}


