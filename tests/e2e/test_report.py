"""End-to-end: `tollctl report` (SPEC §7; tools/tollctl_report*.c, docs/ledger.md).

Every test writes a ledger directory of known records with ledgerfile.encode
(an encoder written from the format alone, sharing no code with tollgate),
runs build/tollctl report on it and checks the numbers against what this
file works out from the same records, to the micro-dollar:

  - spend grouped by the --by dimensions (calls, usd, tokens, refusals,
    share of total), with --top, --by day and tag dimensions;
  - the east-west chargeback matrix and each team's net;
  - cost per outcome (last outcome of a run wins);
  - trajectory outliers (runs above their task type's nearest-rank p99);
  - input:output token ratios per task type;
  - --from / --to, the three formats, damage (exit 2, the rest reported)
    and usage errors (exit 1).

Money is integer micro-USD here too: report money strings are parsed with
micros() and compared as integers; shares are compared as decimals.
"""

import calendar
import collections
import csv
import decimal
import io
import json
import os
import random
import subprocess
import tempfile

import ledgerfile
from harness import build_dir

T0 = calendar.timegm((2026, 11, 23, 0, 0, 0)) * 1000      # 2026-11-23T00:00:00Z
HOUR = 3600 * 1000
DAY = 24 * HOUR
SPEND = ("commit", "expire")
GROUP_NUMBERS = ("calls", "spend_usd", "input_tokens", "output_tokens", "cached_tokens",
                 "refused", "share")


# ---------------------------------------------------------------- helpers

def micros(text):
    """A report money string ("12.50", "-0.000001") as integer micro-USD."""
    neg = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    assert frac.isdigit() and 2 <= len(frac) <= 6 and whole.isdigit(), text
    v = int(whole) * 1000000 + int(frac.ljust(6, "0"))
    return -v if neg else v


def money(v):
    """Integer micro-USD as the report spells it (money_format)."""
    sign, v = ("-", -v) if v < 0 else ("", v)
    frac = ("%06d" % (v % 1000000)).rstrip("0")
    return "%s%d.%s" % (sign, v // 1000000, frac.ljust(2, "0"))


def div_round(n, d):
    """n / d rounded half away from zero, in integers."""
    q = (abs(n) * 2 + d) // (2 * d)
    return q if n >= 0 else -q


def rec(kind, t, usd=0, run="", key="k1", user="u1", team="t1", model="m1",
        provider="p1", tags="", code="", peer_team="", inp=0, out=0, cached=0):
    return dict(kind=kind, time_ms=t, usd=usd, run=run, key=key, user=user, team=team,
                model=model, provider=provider, tags=tags, code=code, peer_team=peer_team,
                input=inp, output=out, cached=cached)


def write_ledger(directory, segments):
    """segments: {(shard, seq): [record dict, ...]}. Returns the paths."""
    paths = {}
    decision = 0
    for (shard, seq), recs in sorted(segments.items()):
        data = [ledgerfile.encode("segment", decision=shard, run_limit=seq,
                                  code=ledgerfile.SEGMENT_MAGIC, time_ms=T0)]
        for r in recs:
            decision += 1
            data.append(ledgerfile.encode(decision=shard << 48 | decision, **r))
        path = os.path.join(directory, "s%03d-%010d.tgl" % (shard, seq))
        with open(path, "wb") as f:
            f.write(b"".join(data))
        paths[(shard, seq)] = path
    return paths


def in_order(segments):
    """Every record in ledger order (shard, seq, position)."""
    return [r for _, recs in sorted(segments.items()) for r in recs]


def tollctl(env, *args):
    """(exit code, stdout, stderr) of build/tollctl ARGS."""
    p = subprocess.run([os.path.join(build_dir(env), "tollctl"), *args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def report_json(env, directory, *args, rc=0):
    code, out, err = tollctl(env, "report", "--ledger", directory, "--format", "json", *args)
    assert code == rc, "exit %d (expected %d): %s" % (code, rc, err)
    return json.loads(out, parse_float=decimal.Decimal)


def report_csv(env, directory, *args):
    """{section name: [row dict, ...]} of the CSV format."""
    code, out, err = tollctl(env, "report", "--ledger", directory, "--format", "csv", *args)
    assert code == 0, err
    blocks, name = {}, None
    lines = []
    for line in out.split("\n") + ["# end"]:
        if line.startswith("# "):
            if name:
                blocks[name] = list(csv.DictReader(io.StringIO("\n".join(lines))))
            name, lines = line[2:], []
        elif line:
            lines.append(line)
    return blocks


def tag(tags, name):
    for pair in tags.split(","):
        k, _, v = pair.strip().partition("=")
        if k == name and v:
            return v
    return "-"


def dim(r, d):
    if d == "day":
        y, m, dd = __import__("time").gmtime(r["time_ms"] // 1000)[:3]
        return "%04d-%02d-%02d" % (y, m, dd)
    if d in ("task", "app", "env"):
        return tag(r["tags"], d)
    return r[d] or "-"


def expected_groups(records, by):
    g = collections.defaultdict(lambda: dict(calls=0, spend_usd=0, input_tokens=0,
                                             output_tokens=0, cached_tokens=0, refused=0))
    for r in records:
        if r["kind"] in SPEND:
            x = g[tuple(dim(r, d) for d in by)]
            x["calls"] += 1
            x["spend_usd"] += r["usd"]
            x["input_tokens"] += r["input"]
            x["output_tokens"] += r["output"]
            x["cached_tokens"] += r["cached"]
        elif r["kind"] == "refuse":
            g[tuple(dim(r, d) for d in by)]["refused"] += 1
    return dict(g)


def got_groups(doc, by):
    out = {}
    for row in doc["groups"]:
        k = tuple(row[d] for d in by)
        assert k not in out, "group %r twice" % (k,)
        out[k] = dict(row)
        out[k]["spend_usd"] = micros(row["spend_usd"])
        for d in by:
            del out[k][d]
    return out


def check_groups(doc, records, by):
    want = expected_groups(records, by)
    got = got_groups(doc, by)
    total = sum(x["spend_usd"] for x in want.values())
    for k, x in want.items():
        x["share"] = decimal.Decimal(div_round(x["spend_usd"] * 10000, total)
                                     if total > 0 else 0) / 10000
    shares = {k: v.pop("share") for k, v in got.items()}
    for k, x in want.items():
        assert shares[k] == x.pop("share"), (k, shares[k])
    assert got == want, "groups:\n got %r\nwant %r" % (got, want)
    spends = [micros(row["spend_usd"]) for row in doc["groups"]]
    assert spends == sorted(spends, reverse=True), spends
    t = doc["totals"]
    assert micros(t["spend_usd"]) == total
    assert t["calls"] == sum(x["calls"] for x in want.values())
    assert t["refused"] == sum(x["refused"] for x in want.values())
    assert t["input_tokens"] == sum(x["input_tokens"] for x in want.values())
    assert t["output_tokens"] == sum(x["output_tokens"] for x in want.values())
    assert t["cached_tokens"] == sum(x["cached_tokens"] for x in want.values())
    assert t["groups"] == len(want)


def mixed_segments(seed=1, n=600):
    """A seeded mix of every kind over two shards, three segments."""
    rnd = random.Random(seed)
    teams, models = ("alpha", "beta", "gamma"), ("gpt-4o", "claude", "")
    tagsets = ("app=support,env=prod,task=refund", "task=triage, app=web", "env=dev", "",
               "app=support,env=prod,task=triage")
    recs = []
    for i in range(n):
        kind = rnd.choice(("reserve", "commit", "commit", "refuse", "release", "expire",
                           "chargeback", "outcome", "freeze"))
        recs.append(rec(kind, T0 + i * 7 * 60 * 1000, usd=rnd.randint(0, 3000000),
                        run="run-%d" % rnd.randint(0, 40), key="key-%d" % rnd.randint(0, 5),
                        user=rnd.choice(("ann", "bob", "")), team=rnd.choice(teams),
                        model=rnd.choice(models), provider=rnd.choice(("openai", "anthropic")),
                        tags=rnd.choice(tagsets), inp=rnd.randint(0, 5000),
                        out=rnd.randint(0, 900), cached=rnd.randint(0, 100),
                        code=rnd.choice(("ok", "fail")),
                        peer_team=rnd.choice(teams) if kind == "chargeback" else ""))
    return {(0, 1): recs[:250], (0, 2): recs[250:400], (1, 1): recs[400:]}


# ---------------------------------------------------------------- tests

def test_groups_default_and_every_dimension(env):
    with tempfile.TemporaryDirectory() as d:
        segs = mixed_segments()
        write_ledger(d, segs)
        records = in_order(segs)
        doc = report_json(env, d)
        assert doc["by"] == ["team", "model"]
        check_groups(doc, records, ("team", "model"))
        assert doc["totals"]["records"] == len(records)
        assert doc["totals"]["segments"] == 3 and doc["totals"]["damaged_segments"] == 0
        for by in (("user",), ("key", "provider"), ("task",), ("app", "env"), ("day",),
                   ("env", "day", "team")):
            check_groups(report_json(env, d, "--by", ",".join(by)), records, by)


def test_top_limits_rows_not_totals(env):
    with tempfile.TemporaryDirectory() as d:
        segs = mixed_segments(seed=2)
        write_ledger(d, segs)
        full = report_json(env, d, "--by", "team,model,user")
        top = report_json(env, d, "--by", "team,model,user", "--top", "3")
        assert len(full["groups"]) > 3
        assert top["groups"] == full["groups"][:3]
        assert top["totals"] == full["totals"]


def test_by_day_and_tags(env):
    recs = [
        rec("commit", T0 + 1, usd=1000000, tags="app=a,env=prod,task=x", inp=30, out=10),
        rec("commit", T0 + DAY - 1, usd=2000000, tags="task=x, app=a", inp=5, out=5),
        rec("expire", T0 + DAY, usd=500000, tags="env=prod"),
        rec("commit", T0 - 1, usd=250000, tags=""),           # 2026-11-22T23:59:59.999
        rec("refuse", T0 + DAY + 5, usd=999, tags="task=y"),
        rec("reserve", T0 + 2, usd=7777777, tags="task=x"),   # never spend
        rec("release", T0 + 3, usd=0, tags="task=x"),
    ]
    with tempfile.TemporaryDirectory() as d:
        write_ledger(d, {(0, 1): recs})
        doc = report_json(env, d, "--by", "day")
        got = {row["day"]: (row["calls"], micros(row["spend_usd"]), row["refused"])
               for row in doc["groups"]}
        assert got == {"2026-11-23": (2, 3000000, 0), "2026-11-24": (1, 500000, 1),
                       "2026-11-22": (1, 250000, 0)}, got
        doc = report_json(env, d, "--by", "task,app,env")
        got = {(r["task"], r["app"], r["env"]): micros(r["spend_usd"]) for r in doc["groups"]}
        assert got == {("x", "a", "prod"): 1000000, ("x", "a", "-"): 2000000,
                       ("-", "-", "prod"): 500000, ("-", "-", "-"): 250000,
                       ("y", "-", "-"): 0}, got


def test_chargeback_matrix(env):
    recs = [
        rec("chargeback", T0 + 1, usd=1500000, team="search", peer_team="ads"),
        rec("chargeback", T0 + 2, usd=250000, team="search", peer_team="ads"),
        rec("chargeback", T0 + 3, usd=3000000, team="ads", peer_team="infra"),
        rec("chargeback", T0 + 4, usd=10, team="infra", peer_team="search"),
        rec("commit", T0 + 5, usd=42, team="search"),
    ]
    with tempfile.TemporaryDirectory() as d:
        write_ledger(d, {(0, 1): recs})
        doc = report_json(env, d)
        cb = doc["chargebacks"]
        got = [(t["debit_team"], t["credit_team"], micros(t["usd"]), t["count"])
               for t in cb["transfers"]]
        assert got == [("ads", "infra", 3000000, 1), ("search", "ads", 1750000, 2),
                       ("infra", "search", 10, 1)], got
        teams = {t["team"]: (micros(t["debited_usd"]), micros(t["credited_usd"]),
                             micros(t["net_usd"])) for t in cb["teams"]}
        assert teams == {"ads": (3000000, 1750000, -1250000),
                         "infra": (10, 3000000, 2999990),
                         "search": (1750000, 10, -1749990)}, teams
        assert doc["totals"]["chargebacks"] == 4
        assert micros(doc["totals"]["chargeback_usd"]) == 4750010
        # chargebacks are not spend
        assert micros(doc["totals"]["spend_usd"]) == 42
        code, out, _ = tollctl(env, "report", "--ledger", d)
        assert code == 0
        assert "  ads    → infra:     3.00  (1 chargeback)\n" in out, out
        assert "  search → ads:       1.75  (2 chargebacks)\n" in out, out
        assert "  infra  → search: 0.00001  (1 chargeback)\n" in out, out
    with tempfile.TemporaryDirectory() as d:
        write_ledger(d, {(0, 1): recs[4:]})
        code, out, _ = tollctl(env, "report", "--ledger", d)
        assert code == 0 and "no chargebacks" in out, out
        assert report_json(env, d)["chargebacks"] == {"transfers": [], "teams": []}


def test_cost_per_outcome(env):
    recs = [
        # r1: 3.00 + 1.00 (expire), success
        rec("commit", T0 + 1, usd=3000000, run="r1"),
        rec("expire", T0 + 2, usd=1000000, run="r1"),
        rec("outcome", T0 + 3, run="r1", code="success"),
        # r2: 1.000001, success after a failure (later time wins)
        rec("commit", T0 + 4, usd=1000001, run="r2"),
        rec("outcome", T0 + 9, run="r2", code="success"),
        rec("outcome", T0 + 5, run="r2", code="failure"),
        # r3: 0.5, failure; two outcomes at the same time: the later in ledger order wins
        rec("commit", T0 + 6, usd=500000, run="r3"),
        rec("outcome", T0 + 7, run="r3", code="success"),
        rec("outcome", T0 + 7, run="r3", code="failure"),
        # r4: an outcome and no spend: a run of cost 0
        rec("outcome", T0 + 8, run="r4", code="failure"),
        # r5: spend, no outcome; reserve and refuse do not count
        rec("commit", T0 + 8, usd=9000000, run="r5"),
        rec("reserve", T0 + 8, usd=9000000, run="r1"),
        rec("refuse", T0 + 8, usd=9000000, run="r1"),
        # an outcome naming no run
        rec("outcome", T0 + 8, run="", code="success"),
    ]
    with tempfile.TemporaryDirectory() as d:
        write_ledger(d, {(0, 1): recs[:6], (1, 1): recs[6:]})
        doc = report_json(env, d)
        got = {o["outcome"]: (o["runs"], micros(o["spend_usd"]),
                              micros(o["cost_per_outcome_usd"])) for o in doc["outcomes"]}
        assert got == {"success": (2, 5000001, div_round(5000001, 2)),
                       "failure": (2, 500000, 250000)}, got
        assert [o["outcome"] for o in doc["outcomes"]] == ["failure", "success"]
        assert doc["totals"]["outcomes"] == 7     # outcome records, one naming no run
        assert doc["totals"]["outcome_runs"] == 4
        assert doc["totals"]["runs"] == 4        # runs with spend: r1, r2, r3, r5


def test_outliers_p99(env):
    recs = []
    t = T0
    for i in range(200):                  # 200 runs of 0.001, two calls each
        for _ in range(2):
            t += 1
            recs.append(rec("commit", t, usd=500, run="ok-%03d" % i, key="kr",
                            tags="task=refund"))
    t += 1
    recs.append(rec("commit", t, usd=6000, run="big", key="kbig", tags="task=refund"))
    recs.append(rec("expire", t + 1, usd=4000, run="big", key="kother", tags="task=refund"))
    # a task type with one costly run: fewer than two runs, no outliers
    recs.append(rec("commit", t + 2, usd=99000000, run="alone", tags="task=solo"))
    # untagged runs: 2 runs, the p99 is the larger, nothing above it
    recs.append(rec("commit", t + 3, usd=10, run="u1"))
    recs.append(rec("commit", t + 4, usd=10000000, run="u2"))
    rnd = random.Random(5)
    rnd.shuffle(recs)
    for i, r in enumerate(recs):
        r["time_ms"] = T0 + i
    # the key listed is the one of the run's first call in ledger order
    first_key = [r["key"] for r in recs if r["run"] == "big"][0]
    want = [{"run": "big", "key": first_key, "task": "refund", "cost_usd": "0.01",
             "p99_usd": "0.001"}]
    with tempfile.TemporaryDirectory() as d:
        write_ledger(d, {(0, 1): recs[:300], (0, 2): recs[300:], (2, 7): []})
        doc = report_json(env, d)
        assert doc["outliers"] == want, doc["outliers"]
        assert doc["totals"]["outliers"] == 1
        assert report_csv(env, d)["outliers"] == want


def test_outlier_ranks(env):
    """Nearest-rank p99 over n costs 1..n: the ceil(0.99 n)-th smallest."""
    for n in (2, 99, 100, 101, 150, 250):
        recs = [rec("commit", T0 + i, usd=(i + 1) * 1000, run="r%d" % i, tags="task=t")
                for i in range(n)]
        with tempfile.TemporaryDirectory() as d:
            write_ledger(d, {(0, 1): recs})
            doc = report_json(env, d)
            rank = -(-99 * n // 100)
            want = ["r%d" % i for i in range(n - 1, rank - 1, -1)]
            got = [o["run"] for o in doc["outliers"]]
            assert got == want, (n, got, want)
            assert all(micros(o["p99_usd"]) == rank * 1000 for o in doc["outliers"])


def test_token_ratios(env):
    recs = [
        rec("commit", T0 + 1, tags="task=summarize", inp=3000, out=1000),
        rec("expire", T0 + 2, tags="task=summarize", inp=420, out=0),
        rec("commit", T0 + 3, tags="task=chat", inp=100, out=300),
        rec("commit", T0 + 4, tags="", inp=7, out=0),
        rec("refuse", T0 + 5, tags="task=chat", inp=999999, out=1),
        rec("reserve", T0 + 6, tags="task=chat", inp=999999, out=1),
    ]
    with tempfile.TemporaryDirectory() as d:
        write_ledger(d, {(0, 1): recs})
        doc = report_json(env, d)
        got = [(r["task"], r["calls"], r["input_tokens"], r["output_tokens"], r["ratio"])
               for r in doc["token_ratios"]]
        assert got == [("-", 1, 7, 0, None), ("chat", 1, 100, 300, "0.33:1"),
                       ("summarize", 2, 3420, 1000, "3.42:1")], got
        code, out, _ = tollctl(env, "report", "--ledger", d)
        assert code == 0 and "3.42:1" in out and "0.33:1" in out, out


def test_from_to(env):
    segs = mixed_segments(seed=3)
    records = in_order(segs)
    lo, hi = T0 + 20 * HOUR, T0 + 50 * HOUR
    with tempfile.TemporaryDirectory() as d:
        write_ledger(d, segs)
        # 2026-11-23T20:00Z as 22:00+02:00; [from, to)
        doc = report_json(env, d, "--from", "2026-11-23T22:00+02:00",
                          "--to", "2026-11-25T02:00:00.000Z")
        kept = [r for r in records if lo <= r["time_ms"] < hi]
        assert 0 < len(kept) < len(records)
        assert doc["from"] == "2026-11-23T20:00:00.000Z"
        assert doc["to"] == "2026-11-25T02:00:00.000Z"
        assert doc["totals"]["records"] == len(kept)
        check_groups(doc, kept, ("team", "model"))
        doc = report_json(env, d, "--from", "2026-11-24")
        check_groups(doc, [r for r in records if r["time_ms"] >= T0 + DAY],
                     ("team", "model"))


def test_formats_agree(env):
    with tempfile.TemporaryDirectory() as d:
        write_ledger(d, mixed_segments(seed=4))
        doc = report_json(env, d, "--by", "team,day")
        blocks = report_csv(env, d, "--by", "team,day")
        assert list(blocks) == ["groups", "chargebacks", "chargeback_teams", "outcomes",
                                "outliers", "token_ratios", "totals"]

        def plain(rows):
            return [{k: str(v) for k, v in r.items()} for r in rows]
        assert blocks["groups"] == plain(doc["groups"])
        assert blocks["chargebacks"] == plain(doc["chargebacks"]["transfers"])
        assert blocks["chargeback_teams"] == plain(doc["chargebacks"]["teams"])
        assert blocks["outcomes"] == plain(doc["outcomes"])
        assert blocks["token_ratios"] == plain(
            [dict(r, ratio=r["ratio"] or "") for r in doc["token_ratios"]])
        assert blocks["totals"] == plain([doc["totals"]])
        # the text format: every section, the groups' total row
        code, out, err = tollctl(env, "report", "--ledger", d, "--by", "team,day")
        assert code == 0, err
        for heading in ("Spend by team, day", "East-west chargebacks", "Cost per outcome",
                        "Trajectory outliers", "Input:output tokens per task type",
                        "Totals"):
            assert heading in out, heading
        total = [l for l in out.splitlines() if l.startswith("total ")]
        assert len(total) == 1 and doc["totals"]["spend_usd"] in total[0], total
        assert "100.00%" in total[0]


def test_damaged_segment(env):
    segs = mixed_segments(seed=6)
    with tempfile.TemporaryDirectory() as d:
        paths = write_ledger(d, segs)
        # flip a byte inside the 10th record of an older segment: corrupt
        victim = segs[(0, 1)][9]
        path = paths[(0, 1)]
        scan = ledgerfile.read(d).segments[0].scan
        hit = scan.records[10]                        # [0] is the segment record
        assert hit.decision & 0xffffffffffff == 10
        with open(path, "r+b") as f:
            f.seek(hit.offset + 40)
            b = f.read(1)
            f.seek(hit.offset + 40)
            f.write(bytes([b[0] ^ 0xff]))
        # and cut the newest segment of shard 1 inside its last record: a torn tail
        with open(paths[(1, 1)], "r+b") as f:
            f.truncate(os.path.getsize(paths[(1, 1)]) - 5)
        survivors = [r for r in in_order(segs) if r is not victim and
                     r is not segs[(1, 1)][-1]]
        code, out, err = tollctl(env, "report", "--ledger", d, "--format", "json")
        assert code == 2, (code, err)
        assert "s000-0000000001.tgl" in err and "corrupt" in err, err
        assert "s001-0000000001.tgl" in err and "torn tail" in err, err
        doc = json.loads(out, parse_float=decimal.Decimal)
        assert doc["totals"]["records"] == len(survivors)
        assert doc["totals"]["damaged_segments"] == 2
        check_groups(doc, survivors, ("team", "model"))
        # the independent reader agrees on what survived
        kept = [r for r in ledgerfile.read(d).records() if r.kind_name != "segment"]
        assert len(kept) == len(survivors)


def test_usage_errors(env):
    with tempfile.TemporaryDirectory() as d:
        write_ledger(d, {(0, 1): [rec("commit", T0, usd=1)]})
        for args in (["--by", "team,colour"], ["--by", "team,team"], ["--by", ""],
                     ["--top", "0"], ["--top", "-1"], ["--top", "x"],
                     ["--format", "xml"], ["--from", "2026-13-01"],
                     ["--from", "2026-11-24", "--to", "2026-11-23"], ["stray"], ["--bogus"]):
            code, out, err = tollctl(env, "report", "--ledger", d, *args)
            assert code == 1, (args, code, err)
            assert out == "" and "usage" in err, (args, out, err)
        code, _, err = tollctl(env, "report")
        assert code == 1 and "--ledger" in err, err
        code, _, err = tollctl(env, "report", "--ledger", os.path.join(d, "missing"))
        assert code == 1 and "missing" in err, err
        # --json is --format json
        code, out, _ = tollctl(env, "report", "--ledger", d, "--json")
        assert code == 0 and micros(json.loads(out)["totals"]["spend_usd"]) == 1


def test_empty_ledger(env):
    with tempfile.TemporaryDirectory() as d:
        doc = report_json(env, d)
        assert doc["groups"] == [] and doc["outcomes"] == [] and doc["outliers"] == []
        assert doc["totals"]["records"] == 0 and doc["totals"]["spend_usd"] == "0.00"
        code, out, _ = tollctl(env, "report", "--ledger", d)
        assert code == 0 and "no chargebacks" in out, out
        assert "no calls and no refusals" in out and "\ntotal" not in out, out
