#!/usr/bin/env python3
"""Runs the end-to-end tests: every test_*(env) in tests/e2e/test_*.py.

    python3 tests/e2e/run.py --build DIR [-k SUBSTRING] [-v]

Tests run one after another, in file order then definition order, each with
env = {'build': DIR}. A test passes if it returns, is skipped if it raises
harness.Skip, and fails on any other exception, or if a process it started
(through harness.py) exits non-zero or prints a sanitizer report: after
every test, whatever it left running is stopped and checked. One line per
test, then exactly one closing line: "N passed, N failed[, N skipped]".
Exit code 0 iff nothing failed.
"""

import argparse
import importlib
import inspect
import os
import resource
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_TIMEOUT_S = 150        # a hung test fails instead of stalling the suite
sys.path.insert(0, HERE)

import harness  # noqa: E402


def discover(pattern):
    tests = []
    for fname in sorted(os.listdir(HERE)):
        if not (fname.startswith("test_") and fname.endswith(".py")):
            continue
        mod = importlib.import_module(fname[:-3])
        funcs = [(name, f) for name, f in vars(mod).items()
                 if name.startswith("test_") and inspect.isfunction(f) and
                 f.__module__ == mod.__name__]
        funcs.sort(key=lambda nf: nf[1].__code__.co_firstlineno)
        for name, f in funcs:
            full = "%s.%s" % (fname[:-3], name)
            if pattern is None or pattern in full:
                tests.append((full, f))
    return tests


def reason_of(exc):
    """A one-line-first description of a failure, with where it happened."""
    tb = traceback.extract_tb(exc.__traceback__)
    frames = [f for f in tb if f.filename.startswith(HERE) and
              not f.filename.endswith("run.py")]
    msg = str(exc)
    if not msg and frames:
        msg = frames[-1].line or ""          # a bare assert: show its source
    msg = msg or exc.__class__.__name__
    if not isinstance(exc, AssertionError):
        msg = "%s: %s" % (exc.__class__.__name__, msg)
    if frames:
        f = frames[-1]
        where = "%s:%d" % (os.path.basename(f.filename), f.lineno)
        test_frames = [x for x in frames if os.path.basename(x.filename).startswith("test_")]
        if test_frames and test_frames[-1] is not f:
            t = test_frames[-1]
            where = "%s:%d via %s" % (os.path.basename(t.filename), t.lineno, where)
        msg = "%s [%s]" % (msg, where)
    if len(msg) > 4000:
        msg = msg[:4000] + "..."
    return msg


class TestTimeout(Exception):
    pass


def on_alarm(signum, frame):
    raise TestTimeout("test still running after %ds" % TEST_TIMEOUT_S)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="build directory (build, build-asan)")
    ap.add_argument("-k", dest="pattern", help="run only tests whose name contains this")
    ap.add_argument("-v", action="store_true", help="show process logs of failed tests")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    for prog in ("tollgate", "mockllm"):
        if not os.access(os.path.join(build, prog), os.X_OK):
            print("run.py: %s/%s is missing; run make first" % (args.build, prog))
            print("0 passed, 1 failed")
            return 1
    raise_nofile()
    signal.signal(signal.SIGALRM, on_alarm)
    env = {"build": build}
    passed = failed = skipped = 0
    t_all = time.monotonic()
    for name, fn in discover(args.pattern):
        t0 = time.monotonic()
        status, reason = "PASS", ""
        try:
            signal.alarm(TEST_TIMEOUT_S)
            fn(env)
        except harness.Skip as e:
            status, reason = "SKIP", str(e)
        except BaseException as e:          # noqa: B902 - a test may raise anything
            if isinstance(e, KeyboardInterrupt):
                harness.reap()
                raise
            status, reason = "FAIL", reason_of(e)
        signal.alarm(0)
        probs = harness.reap()
        logs = harness.take_logs()
        if probs:
            reason = "\n".join(([reason] if status == "FAIL" else []) + probs)
            status = "FAIL"
        took = time.monotonic() - t0
        if status == "PASS":
            passed += 1
            print("PASS %s (%.2fs)" % (name, took))
        elif status == "SKIP":
            skipped += 1
            print("SKIP %s: %s" % (name, reason))
        else:
            failed += 1
            print("FAIL %s: %s (%.2fs)" % (name, reason, took))
            if args.v:
                for who, tail in logs.items():
                    print("  --- %s stderr (tail) ---" % who)
                    for line in tail.splitlines():
                        print("  " + line)
        sys.stdout.flush()
    print("# total %.1fs" % (time.monotonic() - t_all), file=sys.stderr)
    line = "%d passed, %d failed" % (passed, failed)
    if skipped:
        line += ", %d skipped" % skipped
    print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
