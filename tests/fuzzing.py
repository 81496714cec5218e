"""Byte-mutation fuzzing with hypothesis, shared by the tests of the file readers
(checkpoints in test_checkpoint.py, CIFAR-10 archives and batches in test_data.py).

A reader under test must, for every mutated input, either succeed or raise its one
documented error type with a one-line message; any other exception, or no answer
within the watchdog's time, fails the test. CI runs FUZZ_EXAMPLES inputs per test
(250); ``FCGPU_FUZZ_EXAMPLES=20000`` runs a long campaign.
"""
import collections
import os
import re
import signal
import struct
import time

from hypothesis import HealthCheck, settings, strategies as st

FUZZ_EXAMPLES = int(os.environ.get("FCGPU_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def mutations(max_ops=6):
    """Lists of edits: bit flips, byte overwrites, insertions, deletions, truncation
    and a new value for the first 8 bytes (a length field in safetensors). Each
    edit's position is a fraction of the file, or with ``hot`` set, of the file's
    structural bytes (headers, opcodes) that the caller names in :func:`mutate`."""
    hot, pos = st.booleans(), st.floats(0, 1, exclude_max=True)
    return st.lists(st.one_of(
        st.tuples(st.just("flip"), hot, pos, st.integers(0, 7)),
        st.tuples(st.just("set"), hot, pos, st.integers(0, 255)),
        st.tuples(st.just("insert"), hot, pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), hot, pos, st.integers(1, 64)),
        st.tuples(st.just("truncate"), hot, pos, st.just(0)),
        st.tuples(st.just("head"), st.just(False), st.just(0.0), st.integers(0, 2 ** 64 - 1)),
    ), min_size=1, max_size=max_ops)


def mutate(blob, ops, hot=()):
    """Apply ``ops`` to ``blob``. ``hot``: (start, stop) byte ranges where edits
    marked hot land (positions are taken in the original layout)."""
    b = bytearray(blob)
    hot = [(a, min(z, len(blob))) for a, z in hot if a < min(z, len(blob))]
    hot_size = sum(z - a for a, z in hot)
    for op, in_hot, where, arg in ops:
        if in_hot and hot_size:
            k = int(where * hot_size)
            for a, z in hot:
                if k < z - a:
                    i = a + k
                    break
                k -= z - a
        else:
            i = int(where * len(b))
        i = min(i, len(b))
        if op == "flip" and i < len(b):
            b[i] ^= 1 << arg
        elif op == "set" and i < len(b):
            b[i] = arg
        elif op == "insert":
            b[i:i] = arg
        elif op == "delete":
            del b[i:i + arg]
        elif op == "truncate":
            del b[i:]
        elif op == "head" and len(b) >= 8:
            b[:8] = struct.pack("<Q", arg)
    return bytes(b)


class Watchdog:
    """Turns a hang into a test failure (SIGALRM: POSIX, main thread)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        def hung(*a):
            raise AssertionError("no answer within %d s: the reader hangs" % self.seconds)
        self.old = signal.signal(signal.SIGALRM, hung)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


TALLY = collections.Counter()


def record(outcome):
    """Count an input's outcome (numbers and quoted values folded together)."""
    text = re.sub(r"[0-9]+|'[^']*'|\([^)]*\)", "_", outcome)
    TALLY[re.sub(r"[\[{].*", "...", text)[:70]] += 1


def tally_report():
    """For a module-scoped fixture: prints how the fuzzed inputs of the module
    ended, for the record of a long run (pytest -s)."""
    TALLY.clear()
    t0 = time.perf_counter()
    yield
    if TALLY:
        print("\nfuzz outcomes (%d inputs, %.0f s):" % (sum(TALLY.values()),
                                                     time.perf_counter() - t0))
        for text, count in TALLY.most_common():
            print("%8d  %s" % (count, text))
