"""End-to-end: budget alerts and the reservation TTL (SPEC §2, §4, §6;
core/alerts.c, core/config.c, net/proxy.c).

Alerts. A budget with `alert_at: [fractions]` is watched by a thread that
sweeps every 250 ms: the first time, in the scope's current window, that
committed * 1e6 >= limit * fraction_ppm, it logs (unless `alerts.log:
false`) "budget alert: <kind>:<name> has spent $<committed> of its
$<limit> <window> budget, past <fraction> of it" and POSTs a JSON object to
`alerts.webhook_url` (three attempts, then "alert webhook ... failed 3
times"). Each fraction fires once per window, a reload keeps what has fired,
a new window starts afresh.

Money here is exact and simple: the model "m" costs $0 per input token and
$1.00 per Mtok of output, so a call that asks for and gets N output tokens
(max_tokens = x-mock-tokens = N) is estimated, reserved and charged exactly N
micro-USD.

Reservation TTL. `limits.reservation_ttl_ms`: a budgeted reply still
streaming that long after its decision is cut (client connection closed
mid-body, "reply ran past the reservation TTL" logged) and settled as a
partial reply: the whole reservation is committed, nothing stays reserved.

Every tollgate here runs one worker (as test_downgrade: no lease parked on
another shard). A webhook receiver (http.server on a loopback port) records
every POST and can answer 500 or stall on demand.
"""

import calendar
import http.server
import json
import os
import re
import tempfile
import threading
import time

from harness import (CHAT, LOOPBACK, Mock, Tollgate, call, free_port, make_config, request,
                     run_tollgate_check, sse_events, to_yaml, wait_until, principals)
from test_budget import Price, bearer, chat, key, micros, usd

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
POST_WAIT = 4.0         # a sweep is every 250 ms: an alert is due well before this
QUIET_WAIT = 1.2        # "nothing more happens": about five sweeps


# ---------------------------------------------------------------- webhook receiver

class Hook:
    """A threaded HTTP server on a loopback port recording every POST.

    `status` is what it answers (200 by default); `fail_first` answers 500 to
    that many POSTs first, whatever `status` says; `stall_s` waits that long
    before answering."""

    def __init__(self, status=200):
        self.status = status
        self.fail_first = 0
        self.stall_s = 0.0
        self.lock = threading.Lock()
        self.posts = []     # dicts: path, headers, raw, json, t
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                with hook.lock:
                    hook.posts.append({"path": self.path, "raw": raw, "json": body,
                                       "headers": {k.lower(): v for k, v in self.headers.items()},
                                       "t": time.monotonic()})
                    if hook.fail_first > 0:
                        hook.fail_first -= 1
                        status = 500
                    else:
                        status = hook.status
                    stall = hook.stall_s
                if stall:
                    time.sleep(stall)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path="/hooks/budget"):
        return "http://%s:%d%s" % (LOOPBACK, self.port, path)

    def got(self):
        with self.lock:
            return list(self.posts)

    def bodies(self):
        return [p["json"] for p in self.got()]

    def wait_count(self, n, timeout=POST_WAIT):
        """Waits until at least n POSTs arrived; returns them all."""
        wait_until(lambda: len(self.got()) >= n, timeout,
                   what="%d webhook POST(s) (got %r)" % (n, self.bodies()))
        return self.got()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---------------------------------------------------------------- config

PRICE = Price("m", "0", "1.00")     # N output tokens cost exactly N micro-USD


def models():
    return {"m": {"provider": "mock-openai", "input_usd_per_mtok": "0",
                  "output_usd_per_mtok": "1.00", "max_output_tokens": 1000000,
                  "context_tokens": 10000000, "tier": "x"}}


def bud(limit, alert_at=None, window="total", mode="hard_gate", **more):
    b = {"limit": limit, "window": window, "mode": mode}
    if alert_at is not None:
        b["alert_at"] = list(alert_at)
    b.update(more)
    return b


def akey(kid, secret, team, budget_=None, user=None):
    k = key(kid, secret, team, user=user)
    if budget_ is not None:
        k["budget"] = budget_
    return k


def build(mock, keys, teams, users=None, orgs=None, alerts=None, limits=None):
    """The config dict (make_config's) of a tollgate with these principals."""
    extra = principals(keys, teams, orgs, users)
    if alerts is not None:
        extra["alerts"] = alerts
    return make_config(0, mock.port, models=models(), limits=limits, extra=extra)


def start(env, mock, cfg, env_vars=None):
    port = free_port()
    cfg["listen"] = [{"addr": "%s:%d" % (LOOPBACK, port)}]
    return Tollgate(env, config=cfg, port=port, workers=1, env_vars=env_vars)


# ---------------------------------------------------------------- calls and state

def spend(tg, secret, n):
    """One call that costs exactly n micro-USD (n output tokens)."""
    r = call(tg, CHAT, chat("m", n), dict(bearer(secret), **{"x-mock-tokens": str(n)}))
    assert r.status == 200, r
    assert r.json()["usage"]["completion_tokens"] == n, r.body[-300:]
    return r


def scopes(tg, secret):
    """GET /v1/budget on a new connection: scope -> (committed, reserved, limit)."""
    r = call(tg, "/v1/budget", None, bearer(secret), method="GET")
    assert r.status == 200, r
    return {s["scope"]: (micros(s["committed_usd"]), micros(s["reserved_usd"]),
                         micros(s["limit_usd"])) for s in r.json()["scopes"]}


def settled(tg, secret, scope, committed, timeout=5.0):
    """Waits until `scope` has nothing reserved and `committed` committed."""
    last = [None]

    def ok():
        last[0] = scopes(tg, secret).get(scope)
        return last[0] is not None and last[0][1] == 0 and last[0][0] == committed
    try:
        wait_until(ok, timeout, what="%s to settle at %s" % (scope, usd(committed)))
    except AssertionError:
        raise AssertionError("%s: (committed, reserved, limit) = %r, want committed %d" %
                             (scope, last[0], committed))


def log_msgs(tg):
    """The "msg" of every JSON log line tollgate wrote so far."""
    out = []
    for line in tg.log().splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if isinstance(j, dict) and "msg" in j:
            out.append(j["msg"])
    return out


def alert_lines(tg):
    return [m for m in log_msgs(tg) if m.startswith("budget alert:")]


def alert_text(scope, committed, limit, window, fraction):
    return "budget alert: %s has spent $%s of its $%s %s budget, past %s of it" % (
        scope, usd(committed), usd(limit), window, fraction)


def check_post(p, scope, fraction, committed, limit, window="total", mode="hard_gate",
               reserved=0, prices_version="e2e-test", clock=None, hook=None):
    """One recorded POST against what it must say, field by field."""
    body = p["json"]
    assert body is not None, ("webhook body is not JSON", p["raw"])
    if hook is not None:
        assert p["path"] == "/hooks/budget", p["path"]
        assert p["headers"].get("content-type", "").startswith("application/json"), p["headers"]
    want = {"type": "budget_alert", "scope": scope, "window": window, "mode": mode,
            "alert_at": fraction, "limit_usd": usd(limit), "committed_usd": usd(committed),
            "reserved_usd": usd(reserved), "prices_version": prices_version}
    got = {k: body.get(k) for k in want}
    assert got == want, (got, want)
    assert set(body) == set(want) | {"time"}, sorted(body)
    assert TIME_RE.match(body.get("time", "")), body
    if clock is not None:      # the (test) wall clock the alert fired at, +-30 s
        t = calendar.timegm(time.strptime(body["time"], "%Y-%m-%dT%H:%M:%SZ"))
        assert abs(t - clock) <= 30, (body["time"], clock)
    return body


def by_scope(posts):
    return {p["json"]["scope"]: p for p in posts if p["json"]}


# ---------------------------------------------------------------- 1. thresholds

def test_alert_exact_thresholds_fire_once(env):
    """0.5 and 0.8 of a key's $0.01: 4999 micro spent is not 0.5 (no
    alert), 5000 is (one POST, exact figures, one log line); 7999 is not 0.8,
    8000 is; spending on to 9500 sends nothing more. The team's budget has
    no alert_at and never alerts."""
    limit = 10000
    keys = [akey("k", "sk-k", "t", bud("0.01", ["0.5", "0.8"]))]
    teams = {"t": {"budget": bud("0.02")}}
    with Hook() as hook, Mock(env) as mk:
        cfg = build(mk, keys, teams, alerts={"webhook_url": hook.url(), "log": True})
        with start(env, mk, cfg) as tg:
            spend(tg, "sk-k", 4999)
            settled(tg, "sk-k", "key:k", 4999)
            time.sleep(QUIET_WAIT)
            assert hook.got() == [], ("alert below 0.5 (4999 of 10000)", hook.bodies())
            assert alert_lines(tg) == [], alert_lines(tg)

            spend(tg, "sk-k", 1)                    # 5000: exactly half
            t_fire = time.time()
            posts = hook.wait_count(1)
            check_post(posts[0], "key:k", "0.50", 5000, limit, clock=t_fire, hook=hook)
            assert posts[0]["headers"].get("host") in (
                "%s:%d" % (LOOPBACK, hook.port), LOOPBACK), posts[0]["headers"]
            wait_until(lambda: alert_lines(tg), 2.0, what="the alert's log line")
            assert alert_lines(tg) == [alert_text("key:k", 5000, limit, "total", "0.50")], \
                alert_lines(tg)

            spend(tg, "sk-k", 2999)                 # 7999: just below 0.8
            settled(tg, "sk-k", "key:k", 7999)
            time.sleep(QUIET_WAIT)
            assert len(hook.got()) == 1, ("alert below 0.8 or a repeat", hook.bodies())

            spend(tg, "sk-k", 1)                    # 8000: exactly 0.8
            posts = hook.wait_count(2)
            check_post(posts[1], "key:k", "0.80", 8000, limit, clock=time.time(), hook=hook)
            wait_until(lambda: len(alert_lines(tg)) >= 2, 2.0, what="the second log line")

            spend(tg, "sk-k", 1000)
            spend(tg, "sk-k", 500)                  # 9500
            settled(tg, "sk-k", "key:k", 9500)
            settled(tg, "sk-k", "team:t", 9500)     # 0.475 of the team's: no alert_at
            time.sleep(QUIET_WAIT)
            assert len(hook.got()) == 2, ("more alerts after both fired", hook.bodies())
            assert alert_lines(tg) == [
                alert_text("key:k", 5000, limit, "total", "0.50"),
                alert_text("key:k", 8000, limit, "total", "0.80")], alert_lines(tg)


def test_alert_several_scope_kinds_at_once(env):
    """One call crosses a threshold of its key, user, team and org at once
    (each its own window and mode, the user's fraction being 1): four
    POSTs, each with its scope's own figures, and four log lines. A
    fraction not reached (the org's 0.5) and another key of the same team
    that spent nothing send nothing. The clock is pinned at noon UTC so
    that no day, week or month rolls over during the test."""
    fd, clock_file = tempfile.mkstemp(prefix="e2e-clock-")
    os.close(fd)
    now = int(time.time())
    offset = 43200 - now % 86400
    with open(clock_file, "w") as f:
        f.write("%d\n" % offset)
    keys = [akey("k", "sk-k", "t", bud("0.10", ["0.1"]), user="u"),
            akey("k2", "sk-k2", "t", bud("1.00", ["0.000001"]))]
    users = {"u": {"parent": "t", "budget": bud("0.01", ["1"], window="day")}}
    teams = {"t": {"parent": "o", "budget": bud("0.02", ["0.5"], window="week",
                                                 mode="soft_gate", soft_margin="0.00")}}
    orgs = {"o": {"budget": bud("0.04", ["0.25", "0.5"], window="month",
                                mode="actuals_only")}}
    try:
        with Hook() as hook, Mock(env) as mk:
            cfg = build(mk, keys, teams, users=users, orgs=orgs,
                        alerts={"webhook_url": hook.url()})
            with start(env, mk, cfg, {"TOLLGATE_TEST_CLOCK_FILE": clock_file}) as tg:
                spend(tg, "sk-k", 10000)
                clock = time.time() + offset
                posts = hook.wait_count(4)
                got = by_scope(posts)
                assert len(posts) == 4 and len(got) == 4, [p["json"] for p in posts]
                assert set(got) == {"key:k", "user:u", "team:t", "org:o"}, sorted(got)
                check_post(got["key:k"], "key:k", "0.10", 10000, 100000, clock=clock,
                           hook=hook)
                check_post(got["user:u"], "user:u", "1.00", 10000, 10000, window="day",
                           clock=clock, hook=hook)
                check_post(got["team:t"], "team:t", "0.50", 10000, 20000, window="week",
                           mode="soft_gate", clock=clock, hook=hook)
                check_post(got["org:o"], "org:o", "0.25", 10000, 40000, window="month",
                           mode="actuals_only", clock=clock, hook=hook)
                wait_until(lambda: len(alert_lines(tg)) >= 4, 2.0, what="four log lines")
                time.sleep(QUIET_WAIT)
                assert len(hook.got()) == 4, hook.bodies()
                assert sorted(alert_lines(tg)) == sorted([
                    alert_text("key:k", 10000, 100000, "total", "0.10"),
                    alert_text("user:u", 10000, 10000, "day", "1.00"),
                    alert_text("team:t", 10000, 20000, "week", "0.50"),
                    alert_text("org:o", 10000, 40000, "month", "0.25")]), alert_lines(tg)
    finally:
        os.unlink(clock_file)


def test_alert_log_false_still_posts(env):
    """alerts.log: false: the webhook gets the POST, the log gets no line."""
    keys = [akey("k", "sk-k", "t", bud("0.01", ["0.5"]))]
    with Hook() as hook, Mock(env) as mk:
        cfg = build(mk, keys, {"t": {}}, alerts={"webhook_url": hook.url(), "log": False})
        with start(env, mk, cfg) as tg:
            spend(tg, "sk-k", 6000)
            posts = hook.wait_count(1)
            check_post(posts[0], "key:k", "0.50", 6000, 10000, hook=hook)
            # the log line would come before the POST: it is not there
            time.sleep(0.3)
            assert alert_lines(tg) == [], alert_lines(tg)
            assert not [m for m in log_msgs(tg) if "budget alert" in m], log_msgs(tg)
            time.sleep(QUIET_WAIT)
            assert len(hook.got()) == 1, hook.bodies()


def test_alert_log_only_without_webhook(env):
    """No webhook_url: the log line alone, once."""
    keys = [akey("k", "sk-k", "t", bud("0.01", ["0.25"]))]
    with Mock(env) as mk:
        cfg = build(mk, keys, {"t": {}})          # no alerts section: log defaults on
        with start(env, mk, cfg) as tg:
            spend(tg, "sk-k", 2500)
            want = alert_text("key:k", 2500, 10000, "total", "0.25")
            wait_until(lambda: alert_lines(tg), POST_WAIT, what="the alert's log line")
            time.sleep(QUIET_WAIT)
            assert alert_lines(tg) == [want], alert_lines(tg)


# ---------------------------------------------------------------- 2. delivery failures

def failed_lines(tg, url):
    return [m for m in log_msgs(tg) if "alert webhook" in m and url in m and
            "failed 3 times" in m]


def test_alert_webhook_500_retried_three_times(env):
    """A webhook answering 500 gets exactly three attempts (same body),
    then "alert webhook <url> failed 3 times" is logged, and nothing is
    retried later; calls made meanwhile are served as usual. A webhook that
    fails once and then answers 200 gets two attempts and no error line."""
    keys = [akey("k", "sk-k", "t", bud("0.01", ["0.5"])),
            akey("k2", "sk-k2", "t", bud("0.01", ["0.5"]))]
    with Hook(status=500) as hook, Mock(env) as mk:
        url = hook.url()
        cfg = build(mk, keys, {"t": {}}, alerts={"webhook_url": url})
        with start(env, mk, cfg) as tg:
            spend(tg, "sk-k", 5000)
            hook.wait_count(1)
            for _ in range(3):                      # while it retries: served
                spend(tg, "sk-k", 100)
            wait_until(lambda: failed_lines(tg, url), 10.0,
                       what="the 'failed 3 times' log line (posts: %r)" % hook.bodies())
            posts = hook.got()
            assert len(posts) == 3, ("attempts", len(posts), hook.bodies())
            assert len({p["raw"] for p in posts}) == 1, [p["raw"] for p in posts]
            check_post(posts[0], "key:k", "0.50", 5000, 10000, hook=hook)
            assert alert_lines(tg) == [alert_text("key:k", 5000, 10000, "total", "0.50")], \
                alert_lines(tg)
            time.sleep(QUIET_WAIT)
            assert len(hook.got()) == 3, ("retried again later", hook.bodies())
            assert len(failed_lines(tg, url)) == 1, failed_lines(tg, url)
            spend(tg, "sk-k", 100)
            settled(tg, "sk-k", "key:k", 5400)

            # One failure, then success: a second attempt, no error line.
            hook.status = 200
            hook.fail_first = 1
            spend(tg, "sk-k2", 5000)
            posts = hook.wait_count(5)
            assert len(posts) == 5, hook.bodies()
            assert posts[3]["raw"] == posts[4]["raw"], (posts[3]["raw"], posts[4]["raw"])
            check_post(posts[4], "key:k2", "0.50", 5000, 10000, hook=hook)
            time.sleep(QUIET_WAIT)
            assert len(hook.got()) == 5, hook.bodies()
            assert len(failed_lines(tg, url)) == 1, failed_lines(tg, url)


def test_alert_webhook_refused(env):
    """Nothing listens at the webhook's port: the failure is logged after
    three attempts; the alert's log line is written; calls are unaffected."""
    port = free_port()
    url = "http://%s:%d/nowhere" % (LOOPBACK, port)
    keys = [akey("k", "sk-k", "t", bud("0.01", ["0.5"]))]
    with Mock(env) as mk:
        cfg = build(mk, keys, {"t": {}}, alerts={"webhook_url": url})
        with start(env, mk, cfg) as tg:
            spend(tg, "sk-k", 5000)
            wait_until(lambda: failed_lines(tg, url), 10.0, what="the 'failed 3 times' line")
            assert alert_lines(tg) == [alert_text("key:k", 5000, 10000, "total", "0.50")], \
                alert_lines(tg)
            spend(tg, "sk-k", 1000)
            settled(tg, "sk-k", "key:k", 6000)
            time.sleep(QUIET_WAIT)
            assert len(failed_lines(tg, url)) == 1, log_msgs(tg)


def test_alert_webhook_timeout(env):
    """A webhook that answers only after 3 s, with alerts.timeout_ms 300:
    each attempt gives up after about 0.3 s, so the failure is logged after
    three attempts well before one answer would even have come."""
    keys = [akey("k", "sk-k", "t", bud("0.01", ["0.5"]))]
    with Hook() as hook, Mock(env) as mk:
        hook.stall_s = 3.0
        url = hook.url()
        cfg = build(mk, keys, {"t": {}}, alerts={"webhook_url": url, "timeout_ms": 300})
        with start(env, mk, cfg) as tg:
            spend(tg, "sk-k", 5000)
            first = hook.wait_count(1)[0]["t"]
            wait_until(lambda: failed_lines(tg, url), 10.0, what="the 'failed 3 times' line")
            took = time.monotonic() - first
            assert len(hook.got()) == 3, hook.bodies()
            # 3 x 0.3 s + 0.2 s + 0.4 s of pauses = 1.5 s; without the
            # timeout it would be at least 9 s
            assert took < 6.0, took
            r = spend(tg, "sk-k", 10)
            assert r.status == 200


# ---------------------------------------------------------------- 3. windows and reloads

def test_alert_refires_after_window_rollover(env):
    """An hour window: 0.5 fires in this hour; the clock file moves one hour
    on, the window's spend starts from zero, and spending past 0.5 and 0.8
    again fires both (with the new hour's figures and time); nothing fires
    on the roll-over itself."""
    fd, clock_file = tempfile.mkstemp(prefix="e2e-clock-")
    os.close(fd)
    now = int(time.time())
    offset = 600 - now % 3600             # ten minutes into an hour: no roll by itself

    def set_offset(o):
        with open(clock_file + ".tmp", "w") as f:
            f.write("%d\n" % o)
        os.replace(clock_file + ".tmp", clock_file)
    set_offset(offset)
    keys = [akey("k", "sk-k", "t", bud("0.01", ["0.5", "0.8"], window="hour"))]
    try:
        with Hook() as hook, Mock(env) as mk:
            cfg = build(mk, keys, {"t": {}}, alerts={"webhook_url": hook.url()})
            with start(env, mk, cfg, {"TOLLGATE_TEST_CLOCK_FILE": clock_file}) as tg:
                spend(tg, "sk-k", 6000)
                posts = hook.wait_count(1)
                b1 = check_post(posts[0], "key:k", "0.50", 6000, 10000, window="hour",
                                clock=time.time() + offset, hook=hook)
                time.sleep(QUIET_WAIT)
                assert len(hook.got()) == 1, hook.bodies()

                set_offset(offset + 3600)
                wait_until(lambda: scopes(tg, "sk-k")["key:k"][0] == 0, 5.0,
                           what="the hour window to roll over (committed back to 0)")
                time.sleep(QUIET_WAIT)
                assert len(hook.got()) == 1, ("an alert on the roll-over", hook.bodies())

                spend(tg, "sk-k", 4999)
                settled(tg, "sk-k", "key:k", 4999)
                time.sleep(QUIET_WAIT)
                assert len(hook.got()) == 1, ("0.5 fired below 0.5 in the new hour",
                                              hook.bodies())
                spend(tg, "sk-k", 3001)                  # 8000: both fractions
                posts = hook.wait_count(3)
                got = {p["json"]["alert_at"]: p for p in posts[1:]}
                assert set(got) == {"0.50", "0.80"}, [p["json"] for p in posts]
                clock = time.time() + offset + 3600
                b2 = check_post(got["0.50"], "key:k", "0.50", 8000, 10000, window="hour",
                                clock=clock, hook=hook)
                check_post(got["0.80"], "key:k", "0.80", 8000, 10000, window="hour",
                           clock=clock, hook=hook)
                t1 = calendar.timegm(time.strptime(b1["time"], "%Y-%m-%dT%H:%M:%SZ"))
                t2 = calendar.timegm(time.strptime(b2["time"], "%Y-%m-%dT%H:%M:%SZ"))
                assert t2 // 3600 == t1 // 3600 + 1, (b1["time"], b2["time"])
                time.sleep(QUIET_WAIT)
                assert len(hook.got()) == 3, hook.bodies()
                lines = alert_lines(tg)
                assert len(lines) == 3 and \
                    lines[0] == alert_text("key:k", 6000, 10000, "hour", "0.50") and \
                    sorted(lines[1:]) == [alert_text("key:k", 8000, 10000, "hour", "0.50"),
                                          alert_text("key:k", 8000, 10000, "hour", "0.80")], \
                    lines
    finally:
        os.unlink(clock_file)


def reload_and_wait(tg, cfg):
    n = tg.log().count("handed to")
    tg.reload(cfg)
    wait_until(lambda: tg.log().count("handed to") > n, 10, what="the reload")


def test_alert_reload_keeps_fired_state(env):
    """0.5 fires; SIGHUP with the same budgets (another prices_version, one
    more key): no second POST for 0.5, twice; then 0.8 fires once, from the
    new generation (its prices_version)."""
    keys = [akey("k", "sk-k", "t", bud("0.01", ["0.5", "0.8"]))]
    with Hook() as hook, Mock(env) as mk:
        cfg = build(mk, keys, {"t": {}}, alerts={"webhook_url": hook.url()})
        with start(env, mk, cfg) as tg:
            spend(tg, "sk-k", 6000)
            hook.wait_count(1)
            check_post(hook.got()[0], "key:k", "0.50", 6000, 10000, hook=hook)

            cfg2 = json.loads(json.dumps(tg.config))
            cfg2["prices_version"] = "e2e-test-2"
            cfg2["keys"].append(akey("other", "sk-other", "t"))
            reload_and_wait(tg, cfg2)
            time.sleep(QUIET_WAIT)
            assert len(hook.got()) == 1, ("re-fired after a reload", hook.bodies())
            reload_and_wait(tg, json.loads(json.dumps(cfg2)))
            time.sleep(QUIET_WAIT)
            assert len(hook.got()) == 1, ("re-fired after a second reload", hook.bodies())
            settled(tg, "sk-k", "key:k", 6000)         # spend kept across reloads

            spend(tg, "sk-k", 2000)
            posts = hook.wait_count(2)
            check_post(posts[1], "key:k", "0.80", 8000, 10000, prices_version="e2e-test-2",
                       hook=hook)
            time.sleep(QUIET_WAIT)
            assert len(hook.got()) == 2, hook.bodies()
            assert alert_lines(tg) == [alert_text("key:k", 6000, 10000, "total", "0.50"),
                                       alert_text("key:k", 8000, 10000, "total", "0.80")], \
                alert_lines(tg)


def test_alert_reload_with_new_fraction_no_duplicate(env):
    """0.5 fires; a reload adds a lower fraction in front of it (alert_at
    [0.5, 0.8] -> [0.3, 0.5, 0.8]). 0.5 has already fired in this window and
    must not fire again (whatever is done about the new 0.3); 0.8 still
    fires once when reached."""
    keys = [akey("k", "sk-k", "t", bud("0.01", ["0.5", "0.8"]))]
    with Hook() as hook, Mock(env) as mk:
        cfg = build(mk, keys, {"t": {}}, alerts={"webhook_url": hook.url()})
        with start(env, mk, cfg) as tg:
            spend(tg, "sk-k", 6000)
            hook.wait_count(1)
            cfg2 = json.loads(json.dumps(tg.config))
            cfg2["keys"][0]["budget"]["alert_at"] = ["0.3", "0.5", "0.8"]
            reload_and_wait(tg, cfg2)
            time.sleep(QUIET_WAIT)
            halves = [b for b in hook.bodies() if b["alert_at"] == "0.50"]
            assert len(halves) == 1, ("0.5 fired again after the reload", hook.bodies())
            spend(tg, "sk-k", 2000)
            wait_until(lambda: [b for b in hook.bodies() if b["alert_at"] == "0.80"],
                       POST_WAIT, what="the 0.8 alert")
            time.sleep(QUIET_WAIT)
            bodies = hook.bodies()
            assert len([b for b in bodies if b["alert_at"] == "0.50"]) == 1, bodies
            assert len([b for b in bodies if b["alert_at"] == "0.80"]) == 1, bodies


# ---------------------------------------------------------------- 4. config checks

def check_text(env, tmp, text):
    p = os.path.join(tmp, "c.yaml")
    with open(p, "w") as f:
        f.write(text)
    rc, out = run_tollgate_check(env, p)
    return rc, out, p


def line_of(text, start):
    """1-based numbers of the lines whose stripped text starts with `start`."""
    return [i + 1 for i, line in enumerate(text.splitlines())
            if line.strip().startswith(start)]


def test_alert_config_checks(env):
    """tollgate -t: alert_at fractions in (0, 1] (plain YAML numbers or
    strings), at most 8, and an http webhook are accepted; an https
    webhook, fractions 0, negative, above 1 or with more than six decimals,
    nine fractions, and an unknown alerts key are refused (exit 1, a
    file:line: message naming the problem at the right line)."""
    mk_port = free_port()

    def base(alert_at=("0.5", "0.8"), alerts=None):
        keys = [akey("k", "sk-k", "t", bud("0.01", list(alert_at)))]
        extra = {"teams": {"t": {}}, "keys": keys}
        if alerts is not None:
            extra["alerts"] = alerts
        return to_yaml(make_config(free_port(), mk_port, models=models(), extra=extra)) + "\n"

    with tempfile.TemporaryDirectory() as tmp:
        for ok in (base(), base(["1"]), base(["0.000001"]),
                   base(["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "1.0"]),
                   base(alerts={"webhook_url": "http://127.0.0.1:9/hook", "log": False,
                                "timeout_ms": 500}),
                   base(alerts={"webhook_url": "http://127.0.0.1:9"}),
                   base().replace('alert_at: ["0.5", "0.8"]', "alert_at: [0.5, 0.8]")):
            rc, out, _ = check_text(env, tmp, ok)
            assert rc == 0, (out, ok)

        bad_fractions = [["0"], ["-0.5"], ["1.5"], ["1.000001"], ["0.5", "0"],
                         ["0.0000001"], ["0.1"] * 9,
                         ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]]
        for fr in bad_fractions:
            text = base(fr)
            rc, out, p = check_text(env, tmp, text)
            assert rc == 1, (fr, rc, out)
            want = line_of(text, "alert_at:")
            m = re.search(r"^%s:(\d+): .*alert_at" % re.escape(p), out, re.M)
            assert m, (fr, out)
            assert int(m.group(1)) in want, (fr, out, want)

        # https and other non-http URLs; an unknown key under alerts
        for alerts, needle in (({"webhook_url": "https://127.0.0.1:9/hook"}, "https"),
                               ({"webhook_url": "ftp://127.0.0.1/x"}, "webhook_url"),
                               ({"webhook_url": "http://127.0.0.1:9/x", "sink": "x"}, "sink")):
            text = base(alerts=alerts)
            rc, out, p = check_text(env, tmp, text)
            assert rc == 1, (alerts, rc, out)
            m = re.search(r"^%s:(\d+): .*%s" % (re.escape(p), re.escape(needle)), out, re.M)
            assert m, (alerts, out)
            where = line_of(text, "alerts:") + line_of(text, "webhook_url:") + \
                line_of(text, needle + ":")
            assert int(m.group(1)) in where, (alerts, out, where)


# ---------------------------------------------------------------- 5. reservation TTL

def ttl_config(mock, ttl_ms, keyed=True):
    keys = [akey("k", "sk-k", "t", bud("1.00"))] if keyed else None
    extra = {}
    if keyed:
        extra = {"teams": {"t": {}}, "keys": keys}
    return make_config(0, mock.port, models=models(),
                       limits={"reservation_ttl_ms": ttl_ms}, extra=extra)


def test_reservation_ttl_cuts_long_stream(env):
    """reservation_ttl_ms 1000, a stream of 50 tokens 100 ms apart (5 s):
    about a second after the decision the stream is cut (net/stream.c):
    the agent gets the final error event (code reservation_expired) and
    the chunk terminator, and the connection stays usable; "reply ran past
    the reservation TTL" is logged; the charge is the output counted up to
    the cut (one token per byte of text, input priced 0 here), nothing
    stays reserved. A later call on the same connection is served."""
    with Mock(env) as mk:
        with start(env, mk, ttl_config(mk, 1000)) as tg:
            body = chat("m", 200, stream=True, stream_options={"include_usage": True})
            est = PRICE.estimate(body, 200)
            assert est == 200
            c = tg.conn(timeout=10.0)
            t0 = time.monotonic()
            c.send(request("POST", CHAT, body, dict(bearer("sk-k"), **{
                "x-mock-tokens": "50", "x-mock-token-delay-us": "100000"})))
            r = c.response()
            took = time.monotonic() - t0
            assert r.status == 200, r
            assert r.headers.get("x-budget-decision") == "allow", r.headers
            events = sse_events(r.body)
            assert events[-1][1] == "[DONE]", events[-3:]
            err = json.loads(events[-2][1])["error"]
            assert err["type"] == "budget_exhausted" and err["code"] == "reservation_expired", err
            texts = [json.loads(d)["choices"][0]["delta"].get("content") or ""
                     for _, d in events[:-2] if d and '"choices"' in d]
            assert 0 < len(texts) < 50, len(texts)
            assert 0.9 <= took < 4.5, took
            wait_until(lambda: [m for m in log_msgs(tg)
                                if "reply ran past the reservation TTL" in m], 3.0,
                       what="the TTL log line")
            counted = min(sum(len(t) for t in texts), 200)
            settled(tg, "sk-k", "key:k", counted)
            c.send(request("POST", CHAT, chat("m", 10), bearer("sk-k")))
            r = c.response()
            assert r.status == 200, r
            c.close()
            settled(tg, "sk-k", "key:k", counted + 10)


def test_reservation_ttl_spares_short_replies(env):
    """reservation_ttl_ms 1000: a stream that ends after ~0.4 s and a
    non-stream reply are delivered whole and charged their usage, with no
    TTL log line; a long stream on a relay-only config (no keys, so no
    reservation) is never cut."""
    with Mock(env) as mk:
        with start(env, mk, ttl_config(mk, 1000)) as tg:
            body = chat("m", 200, stream=True, stream_options={"include_usage": True})
            r = call(tg, CHAT, body, dict(bearer("sk-k"), **{
                "x-mock-tokens": "4", "x-mock-token-delay-us": "100000"}))
            assert r.status == 200, r
            assert b"data: [DONE]" in r.body, r.body[-200:]
            usage = [json.loads(d)["usage"] for _, d in sse_events(r.body)
                     if d and d != "[DONE]" and json.loads(d).get("usage")]
            assert usage and usage[-1]["completion_tokens"] == 4, r.body[-300:]
            spend(tg, "sk-k", 7)
            settled(tg, "sk-k", "key:k", 4 + 7)
            assert not [m for m in log_msgs(tg) if "reservation TTL" in m], log_msgs(tg)

    with Mock(env) as mk:
        with start(env, mk, ttl_config(mk, 1000, keyed=False)) as tg:
            body = chat("m", 200, stream=True)
            t0 = time.monotonic()
            r = call(tg, CHAT, body, {"x-mock-tokens": "20",
                                      "x-mock-token-delay-us": "100000"})
            assert r.status == 200, r
            assert time.monotonic() - t0 >= 1.5
            assert b"data: [DONE]" in r.body, r.body[-200:]
            assert not [m for m in log_msgs(tg) if "reservation TTL" in m], log_msgs(tg)


def test_reservation_ttl_config_check(env):
    """limits.reservation_ttl_ms: 1000 is accepted, 999 refused at its line."""
    mk_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        for ttl, rc_want in ((1000, 0), (999, 1), (0, 1)):
            cfg = make_config(free_port(), mk_port, models=models(),
                              limits={"reservation_ttl_ms": ttl})
            text = to_yaml(cfg) + "\n"
            rc, out, p = check_text(env, tmp, text)
            assert rc == rc_want, (ttl, rc, out)
            if rc_want:
                m = re.search(r"^%s:(\d+): .*reservation_ttl_ms" % re.escape(p), out, re.M)
                assert m, out
                assert int(m.group(1)) in line_of(text, "reservation_ttl_ms:"), out
