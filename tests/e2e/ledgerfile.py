"""A reader of tollgate's ledger files, written from the format alone
(ledger/record.h, ledger/segment.h), sharing no code with the daemon.

A segment file "s<shard:03>-<seq:010>.tgl" is a sequence of records, each
little-endian and self-delimiting:

    off  size  field
      0     4  length of the whole record, header included (80 .. 16384)
      4     4  CRC-32C of bytes [8, length)
      8     1  version (1; a later one only appends text fields, so any
               non-zero version is read)
      9     1  kind (1 .. 12)
     10     2  flags
     12     2  HTTP status the agent got
     14     1  budget mode
     15     1  number of text fields that follow the numbers
     16     8  time, UTC milliseconds (signed)
     24     8  decision id
     32     8  usd, micro-USD (signed)
     40     8  reserved, micro-USD (signed)
     48     8  run_limit, micro-USD (signed)
     56    24  input, output, cached tokens (3 x u64)
     80     .  n text fields, each a u16 length (at most 1024) and its bytes

The first record of every segment is a `segment` record naming its shard
(decision) and sequence number (run_limit) with the code "tollgate ledger".

Damage is classified as the daemon does (segment.h): bytes at the end of a
segment from which no whole record can be found again are a *torn tail*
(a crash mid-write, legitimate only in a shard's newest segment); a bad
record followed later by a whole one is *corruption*.

CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) is computed here in
pure Python with a 256-entry table; its check value for b"123456789" is
0xE3069283.

Scanning caches what it read per file: a segment only grows (or is cut at a
torn tail, or rewritten by a repair), so a file whose start is byte for
byte what was read before is parsed from there on only.
"""

import os
import re
import struct

# ---------------------------------------------------------------- CRC-32C

_POLY = 0x82F63B78


def _make_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_TABLE = _make_table()


def crc32c(data, crc=0):
    """CRC-32C of `data` (bytes-like), continuing from `crc`."""
    t = _TABLE
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = t[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283
assert crc32c(b"") == 0

# ---------------------------------------------------------------- format

VERSION = 1
HEADER = 80
MAX_FIELD = 1024
MAX_RECORD = 16384
SEGMENT_MAGIC = "tollgate ledger"
DECISION_SHARD_SHIFT = 48

KINDS = {1: "segment", 2: "reserve", 3: "refuse", 4: "commit", 5: "release", 6: "expire",
         7: "grant_open", 8: "grant_close", 9: "chargeback", 10: "freeze",
         11: "unfreeze", 12: "outcome"}
KIND_OF = {v: k for k, v in KINDS.items()}
N_KINDS = 13                        # LEDGER_KINDS: valid kinds are 1 .. 12

FIELDS = ("run", "key", "user", "team", "org", "provider", "model", "requested_model",
          "prices_version", "tags", "code", "peer_team", "grant", "grantee_key")

F_RUN_KEPT = 1 << 0
F_STREAM = 1 << 1
F_CUT = 1 << 2
F_DOWNGRADED = 1 << 3

MODES = {0: "advisory_estimate", 1: "soft_gate", 2: "hard_gate", 3: "actuals_only"}

_HEAD = struct.Struct("<IIBBHHBBqQqqqQQQ")
assert _HEAD.size == HEADER
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")

SEGMENT_NAME = re.compile(r"^s(\d{3})-(\d{10})\.tgl$")

OK, SHORT, BAD = "ok", "short", "bad"
CLEAN, TORN_TAIL, CORRUPT = "clean", "torn_tail", "corrupt"


class Record:
    """One decoded record. `fields` maps every known field name to its
    text (str; "" when absent); `raw` is its exact bytes on disk."""

    __slots__ = ("offset", "size", "version", "kind", "kind_name", "flags", "status", "mode",
                 "n_fields", "time_ms", "decision", "usd", "reserved", "run_limit", "input",
                 "output", "cached", "fields", "extra_fields", "raw", "segment")

    def __getattr__(self, name):           # rec.key, rec.model ... for text fields
        if name in FIELDS:
            return self.fields[name]
        raise AttributeError(name)

    @property
    def shard(self):
        return self.decision >> DECISION_SHARD_SHIFT

    def __repr__(self):
        texts = ", ".join("%s=%r" % (k, v) for k, v in self.fields.items() if v)
        return ("<%s d=%x usd=%d reserved=%d in=%d out=%d cached=%d status=%d flags=%#x "
                "mode=%s t=%d %s @%s:%d>" % (self.kind_name, self.decision, self.usd,
                                             self.reserved, self.input, self.output,
                                             self.cached, self.status, self.flags,
                                             MODES.get(self.mode, self.mode), self.time_ms,
                                             texts,
                                             self.segment.name if self.segment else "?",
                                             self.offset))


def decode(buf, off=0):
    """(OK, record, size), (SHORT, None, 0) or (BAD, None, 0) for the record
    at buf[off:] (buf: bytes)."""
    avail = len(buf) - off
    if avail < 10:
        return SHORT, None, 0
    length = _U32.unpack_from(buf, off)[0]
    version, kind = buf[off + 8], buf[off + 9]
    if length < HEADER or length > MAX_RECORD or version == 0 or kind == 0 \
            or kind >= N_KINDS:
        return BAD, None, 0
    if avail < length:
        return SHORT, None, 0
    crc = _U32.unpack_from(buf, off + 4)[0]
    if crc32c(memoryview(buf)[off + 8:off + length]) != crc:
        return BAD, None, 0
    (_, _, version, kind, flags, status, mode, n_fields, time_ms, decision, usd, reserved,
     run_limit, inp, out, cached) = _HEAD.unpack_from(buf, off)
    p, end = off + HEADER, off + length
    texts = []
    for _ in range(n_fields):
        if end - p < 2:
            return BAD, None, 0
        n = _U16.unpack_from(buf, p)[0]
        if n > end - p - 2 or n > MAX_FIELD:
            return BAD, None, 0
        texts.append(bytes(buf[p + 2:p + 2 + n]).decode("utf-8", "replace"))
        p += 2 + n
    if p != end:
        return BAD, None, 0
    r = Record()
    r.offset, r.size, r.version, r.kind = off, length, version, kind
    r.kind_name = KINDS[kind]
    r.flags, r.status, r.mode, r.n_fields = flags, status, mode, n_fields
    r.time_ms, r.decision, r.usd, r.reserved, r.run_limit = time_ms, decision, usd, reserved, \
        run_limit
    r.input, r.output, r.cached = inp, out, cached
    r.fields = {name: (texts[i] if i < len(texts) else "") for i, name in enumerate(FIELDS)}
    r.extra_fields = texts[len(FIELDS):]
    r.raw = bytes(buf[off:end])
    r.segment = None
    return OK, r, length


def encode(kind, decision=0, usd=0, reserved=0, run_limit=0, input=0, output=0, cached=0,
           flags=0, status=0, mode=0, time_ms=0, **fields):
    """The bytes of a record (for tests that plant records)."""
    kind = KIND_OF.get(kind, kind)
    texts = []
    for name in FIELDS:
        v = fields.pop(name, "")
        texts.append(v.encode() if isinstance(v, str) else bytes(v))
    assert not fields, "unknown fields %r" % fields
    body = b"".join(_U16.pack(len(t)) + t for t in texts)
    length = HEADER + len(body)
    head = _HEAD.pack(length, 0, VERSION, kind, flags, status, mode, len(texts), time_ms,
                      decision, usd, reserved, run_limit, input, output, cached)
    rec = bytearray(head + body)
    struct.pack_into("<I", rec, 4, crc32c(rec[8:]))
    return bytes(rec)


# ---------------------------------------------------------------- scanning

class Scan:
    """What reading one segment found."""

    def __init__(self):
        self.records = []
        self.size = 0
        self.good_end = 0           # just past the last whole record before damage
        self.damage = CLEAN
        self.bad_offset = None      # first damaged byte
        self.skipped = []           # (from, to) of damaged stretches stepped over

    def __repr__(self):
        return "<Scan %d records, %d bytes, %s at %s>" % (len(self.records), self.size,
                                                          self.damage, self.bad_offset)


def _next_whole(buf, start):
    """The offset of the first whole record after `start`, or None."""
    n = len(buf)
    off = start + 1
    while off + HEADER <= n:
        # cheap checks before the CRC: version byte, kind, length bound
        if buf[off + 8] != 0 and 0 < buf[off + 9] < N_KINDS:
            length = _U32.unpack_from(buf, off)[0]
            if HEADER <= length <= min(MAX_RECORD, n - off):
                rc, _, _ = decode(buf, off)
                if rc == OK:
                    return off
        off += 1
    return None


def scan_bytes(buf, start=0, records=None):
    """Reads buf from `start` (a record boundary) record by record, stepping
    over corrupt stretches to the next whole record."""
    s = Scan()
    s.size = len(buf)
    s.good_end = start
    if records:
        s.records = list(records)
    off = start
    while off < len(buf):
        rc, rec, size = decode(buf, off)
        if rc == OK:
            s.records.append(rec)
            off += size
            if s.damage == CLEAN:
                s.good_end = off
            continue
        nxt = _next_whole(buf, off)
        if nxt is None:
            if s.damage == CLEAN:
                s.damage = TORN_TAIL
                s.bad_offset = off
            s.skipped.append((off, len(buf)))
            break
        if s.damage == CLEAN:
            s.bad_offset = off
        s.damage = CORRUPT
        s.skipped.append((off, nxt))
        off = nxt
    return s


class Segment:
    def __init__(self, directory, name, shard, seq):
        self.dir = directory
        self.name = name
        self.path = os.path.join(directory, name)
        self.shard = shard
        self.seq = seq
        self.last = False
        self.scan = None

    @property
    def records(self):
        return self.scan.records

    def __repr__(self):
        return "<Segment %s%s %r>" % (self.name, " (last)" if self.last else "", self.scan)


_cache = {}     # path -> (bytes up to good_end, records before it)


def read_segment_file(path):
    """Scan of one file, reusing what an earlier read of the same bytes found."""
    with open(path, "rb") as f:
        data = f.read()
    prev = _cache.get(path)
    if prev and len(data) >= len(prev[0]) and data.startswith(prev[0]):
        s = scan_bytes(data, len(prev[0]), prev[1])
    else:
        s = scan_bytes(data)
    _cache[path] = (data[:s.good_end], [r for r in s.records if r.offset < s.good_end])
    return s


def list_segments(directory):
    """The segment files of `directory` sorted by shard then seq (other files
    are ignored), each with `last` set for its shard's newest."""
    segs = []
    for name in os.listdir(directory):
        m = SEGMENT_NAME.match(name)
        if m:
            segs.append(Segment(directory, name, int(m.group(1)), int(m.group(2))))
    segs.sort(key=lambda s: (s.shard, s.seq))
    for i, s in enumerate(segs):
        s.last = i + 1 == len(segs) or segs[i + 1].shard != s.shard
    return segs


class Ledger:
    """Every segment of a directory, read and classified."""

    def __init__(self, directory):
        self.dir = directory
        self.segments = list_segments(directory)
        for seg in self.segments:
            seg.scan = read_segment_file(seg.path)
            # a torn tail is a crash's only in the shard's newest segment
            if seg.scan.damage == TORN_TAIL and not seg.last:
                seg.scan.damage = CORRUPT
            for r in seg.scan.records:
                r.segment = seg

    def records(self, kinds=None):
        """Every record (segment records included unless `kinds` says),
        segment by segment in order."""
        if isinstance(kinds, str):
            kinds = (kinds,)
        out = []
        for seg in self.segments:
            for r in seg.records:
                if kinds is None or r.kind_name in kinds:
                    out.append(r)
        return out

    def by_decision(self):
        """decision id -> its records (segment records left out), in order."""
        out = {}
        for r in self.records():
            if r.kind_name != "segment":
                out.setdefault(r.decision, []).append(r)
        return out

    def damage(self):
        """[(segment name, damage, bad offset)] of every damaged segment."""
        return [(s.name, s.scan.damage, s.scan.bad_offset) for s in self.segments
                if s.scan.damage != CLEAN]

    def problems(self):
        """What is wrong with the ledger as a whole, as messages: damage, and
        segments that do not start with a segment record naming themselves
        (an empty segment file is accepted)."""
        out = ["%s: %s at byte %s" % d for d in self.damage()]
        for s in self.segments:
            recs = s.records
            if not recs:
                # an empty file is what a crash between creating a segment
                # and its first write leaves; anything else is damage
                if s.scan.size:
                    out.append("%s: no whole record in %d bytes" % (s.name, s.scan.size))
                continue
            h = recs[0]
            if h.offset != 0 or h.kind_name != "segment":
                out.append("%s: starts with %r" % (s.name, h))
            elif (h.decision, h.run_limit, h.code) != (s.shard, s.seq, SEGMENT_MAGIC):
                out.append("%s: segment record names shard %d seq %d (%r)" %
                           (s.name, h.decision, h.run_limit, h.code))
            for r in recs[1:]:
                if r.kind_name == "segment":
                    out.append("%s: a segment record at byte %d" % (s.name, r.offset))
        return out

    def verify(self):
        """Raises AssertionError unless the ledger is clean."""
        probs = self.problems()
        assert not probs, "ledger %s: %s" % (self.dir, "; ".join(probs))
        return self


def read(directory):
    return Ledger(directory)
