#!/usr/bin/env python3
"""Load and checks for tests/docker/compose_faults.sh, over the managers'
HTTP API (Python standard library only; keep-alive connections).

  load.py fill   --api URL[,URL...] --prefix P --count N [--threads T]
      writes P<i> = v-P<i> for i in 0..N-1, round-robin over the managers;
      a 503 is retried (bounded); exits 1 unless every write was
      acknowledged.
  load.py verify --api URL --prefix P --count N [--threads T] [--stride S]
      reads every P<i> (every S-th with --stride); prints how many are missing (404) or wrong; exits 1
      unless all read v-P<i>.
  load.py run    --api URL[,URL...] --keys K --threads T --rate R
                 --stop-file F --max-seconds S --report FILE [--verify-api URL]
                 [--key-prefix P]
      a read/write load at about R requests per second in all, until F
      exists (or S seconds). Each thread owns its keys and writes them with
      increasing versions through a random manager, reads through a random
      manager, and checks every read: a value older than the last
      acknowledged write of that key (or a 404 after one) is a stale read;
      a value never written is a wrong read. At the end every key is read
      through each --verify-api (default: every --api): one that does not
      read its last acknowledged version or a later attempted one is a
      lost write. Writes JSON to FILE: requests, errors per manager, stale,
      wrong, lost, latency percentiles (ms, successful requests).
      Exits 1 on any stale or wrong read or lost write.
"""

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.parse


class Conn:
    """One keep-alive connection to one manager; reconnects on error."""

    def __init__(self, api, timeout=5.0):
        u = urllib.parse.urlsplit(api)
        self.host, self.port = u.hostname, u.port or 80
        self.timeout = timeout
        self.c = None

    def request(self, method, path):
        """Returns (status, body bytes); status 0 when nothing answered."""
        for attempt in range(2):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.c.request(method, path)
                r = self.c.getresponse()
                body = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, body
            except (OSError, http.client.HTTPException):
                self.close()
                # A kept-alive connection the server closed meanwhile:
                # once more on a fresh one.
                if attempt == 1:
                    return 0, b""
        return 0, b""

    def close(self):
        if self.c is not None:
            try:
                self.c.close()
            except Exception:
                pass
        self.c = None


def q(key, value=None):
    s = "/?key=" + urllib.parse.quote(key, safe="")
    if value is not None:
        s += "&value=" + urllib.parse.quote(value, safe="")
    return s


def split(n, parts):
    """[lo, hi) ranges splitting range(n) into `parts` pieces."""
    step = (n + parts - 1) // parts
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def fill(args):
    apis = args.api.split(",")
    failed = []
    lock = threading.Lock()

    def worker(lo, hi, t):
        conns = [Conn(a) for a in apis]
        for i in range(lo, hi):
            key = f"{args.prefix}{i}"
            deadline = time.monotonic() + args.retry_seconds
            while True:
                st, body = conns[(i + t) % len(conns)].request("POST", q(key, "v-" + key))
                if st in (200, 201):
                    break
                if time.monotonic() > deadline:
                    with lock:
                        failed.append((key, st, body[:80]))
                    break
                time.sleep(0.05)
        for c in conns:
            c.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(lo, hi, n)) for n, (lo, hi) in enumerate(split(args.count, args.threads))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    print(f"fill: {args.count - len(failed)}/{args.count} written in {dt:.1f}s ({args.count / dt:.0f}/s)")
    for key, st, body in failed[:5]:
        print(f"  not acknowledged: {key}: HTTP {st} {body!r}")
    return 1 if failed else 0


def verify(args):
    missing, wrong, unanswered = [], [], []
    lock = threading.Lock()

    def worker(lo, hi):
        c = Conn(args.api)
        for i in range(lo, hi):
            if i % args.stride:
                continue
            key = f"{args.prefix}{i}"
            deadline = time.monotonic() + args.retry_seconds
            while True:
                st, body = c.request("GET", q(key))
                if st in (200, 404) or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            with lock:
                if st == 404:
                    missing.append(key)
                elif st != 200:
                    unanswered.append((key, st))
                elif body != ("v-" + key).encode():
                    wrong.append((key, body[:40]))
        c.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=r) for r in split(args.count, args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    bad = len(missing) + len(wrong) + len(unanswered)
    n = len(range(0, args.count, args.stride))
    print(
        f"verify {args.api}: {n - bad}/{n} read back in {dt:.1f}s; "
        f"missing {len(missing)}, wrong {len(wrong)}, unanswered {len(unanswered)}"
    )
    for x in (missing[:3], wrong[:3], unanswered[:3]):
        for e in x:
            print(f"  {e}")
    return 1 if bad else 0


def percentile(sorted_xs, p):
    if not sorted_xs:
        return None
    k = min(len(sorted_xs) - 1, max(0, int(round(p / 100.0 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


def run(args):
    apis = args.api.split(",")
    verify_apis = (args.verify_api or args.api).split(",")
    per_thread_rate = args.rate / args.threads
    stop_at = time.monotonic() + args.max_seconds
    lock = threading.Lock()
    totals = {"requests": 0, "writes_acked": 0, "reads_ok": 0, "stale": 0, "wrong": 0, "lost": 0}
    errors = {a: 0 for a in apis}
    latencies = []
    examples = []

    def stopped():
        return time.monotonic() > stop_at or os.path.exists(args.stop_file)

    def worker(t):
        rnd = random.Random(t)
        conns = {a: Conn(a) for a in set(apis) | set(verify_apis)}
        keys = [f"{args.key_prefix}{t}-{j}" for j in range(args.keys // args.threads)]
        acked = {k: 0 for k in keys}  # last acknowledged version
        tried = {k: 0 for k in keys}  # highest version sent
        lat, n, errs, stale, wrong, acks, reads = [], 0, {a: 0 for a in apis}, 0, 0, 0, 0
        ex = []
        next_at = time.monotonic()
        while not stopped():
            next_at += rnd.expovariate(per_thread_rate)
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                next_at = time.monotonic()
            k = rnd.choice(keys)
            a = rnd.choice(apis)
            t0 = time.monotonic()
            if rnd.random() < 0.5:
                v = tried[k] + 1
                tried[k] = v
                st, body = conns[a].request("POST", q(k, f"{k}:{v}"))
                dt = time.monotonic() - t0
                n += 1
                if st in (200, 201):
                    acked[k] = v
                    acks += 1
                    lat.append(dt)
                else:
                    errs[a] += 1
            else:
                st, body = conns[a].request("GET", q(k))
                dt = time.monotonic() - t0
                n += 1
                if st == 200:
                    reads += 1
                    lat.append(dt)
                    try:
                        kk, vv = body.decode().rsplit(":", 1)
                        got = int(vv)
                        assert kk == k
                    except Exception:
                        wrong += 1
                        ex.append(f"{a} read {k} = {body[:40]!r}")
                        continue
                    if got < acked[k]:
                        stale += 1
                        ex.append(f"{a} read {k} version {got} after version {acked[k]} was acknowledged")
                    elif got > tried[k]:
                        wrong += 1
                        ex.append(f"{a} read {k} version {got}, never written")
                elif st == 404:
                    reads += 1
                    lat.append(dt)
                    if acked[k] > 0:
                        stale += 1
                        ex.append(f"{a} read {k}: 404 after version {acked[k]} was acknowledged")
                else:
                    errs[a] += 1
        # Every acknowledged write must still be there, through each manager.
        lost = 0
        for a in verify_apis:
            for k in keys:
                if tried[k] == 0:
                    continue
                deadline = time.monotonic() + 10
                while True:
                    st, body = conns[a].request("GET", q(k))
                    if st in (200, 404) or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                got = None
                if st == 200:
                    try:
                        got = int(body.decode().rsplit(":", 1)[1])
                    except Exception:
                        got = None
                ok = (st == 404 and acked[k] == 0) or (got is not None and acked[k] <= got <= tried[k])
                if not ok:
                    lost += 1
                    ex.append(f"final read of {k} through {a}: HTTP {st} {body[:40]!r}; acknowledged {acked[k]}, sent {tried[k]}")
        for c in conns.values():
            c.close()
        with lock:
            totals["requests"] += n
            totals["writes_acked"] += acks
            totals["reads_ok"] += reads
            totals["stale"] += stale
            totals["wrong"] += wrong
            totals["lost"] += lost
            for a in apis:
                errors[a] += errs[a]
            latencies.extend(lat)
            examples.extend(ex[:5])

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    ms = lambda x: None if x is None else round(x * 1000, 1)
    report = dict(totals)
    report.update(
        seconds=round(time.monotonic() - t0, 1),
        errors=errors,
        p50_ms=ms(percentile(latencies, 50)),
        p99_ms=ms(percentile(latencies, 99)),
        max_ms=ms(latencies[-1] if latencies else None),
        examples=examples[:10],
    )
    with open(args.report, "w") as f:
        json.dump(report, f)
    print("load: " + json.dumps(report))
    return 1 if (totals["stale"] or totals["wrong"] or totals["lost"]) else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("fill", "verify"):
        s = sub.add_parser(name)
        s.add_argument("--api", required=True)
        s.add_argument("--prefix", required=True)
        s.add_argument("--count", type=int, required=True)
        s.add_argument("--threads", type=int, default=8)
        s.add_argument("--retry-seconds", type=float, default=10)
        if name == "verify":
            s.add_argument("--stride", type=int, default=1, help="read only every STRIDE-th key (a sample)")
    s = sub.add_parser("run")
    s.add_argument("--api", required=True)
    s.add_argument("--verify-api")
    s.add_argument("--keys", type=int, default=400)
    s.add_argument("--key-prefix", default="load", help="keys are PREFIX<thread>-<j>: one prefix per run")
    s.add_argument("--threads", type=int, default=4)
    s.add_argument("--rate", type=float, default=200)
    s.add_argument("--stop-file", required=True)
    s.add_argument("--max-seconds", type=float, default=300)
    s.add_argument("--report", required=True)
    a = p.parse_args()
    sys.exit({"fill": fill, "verify": verify, "run": run}[a.cmd](a))


if __name__ == "__main__":
    main()
