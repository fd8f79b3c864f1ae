"""redis-py against ringcache's RESP front: RESP2 and RESP3, pipelines, and
client-side caching with CLIENT TRACKING. Run by tests/tests/resp.rs with the
front's port; exits non-zero (with the failed assertion) on any difference."""
import sys
import time

import redis
from redis.cache import CacheConfig

host, port = sys.argv[1], int(sys.argv[2])
password = sys.argv[3] if len(sys.argv) > 3 else None
# Keys of this run only: the script may run again against the same cluster.
RUN = str(time.time_ns())


def deadline(what, check, seconds=5.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out: {what}")


for protocol in (2, 3):
    r = redis.Redis(host=host, port=port, protocol=protocol, password=password)
    p = f"{RUN}:py{protocol}:"
    assert r.ping() is True
    assert r.set(p + "k", "v") is True
    assert r.get(p + "k") == b"v"
    assert r.get(p + "missing") is None
    assert r.set(p + "k", "w", nx=True) is None
    assert r.set(p + "k", "w", xx=True, get=True) == b"v"
    assert r.incr(p + "n") == 1 and r.incrby(p + "n", 41) == 42
    assert r.mset({p + "a": "1", p + "b": "2"}) is True
    assert r.mget([p + "a", p + "b", p + "none"]) == [b"1", b"2", None]
    assert r.exists(p + "a", p + "b", p + "none") == 2
    assert r.expire(p + "a", 100) is True and 99 <= r.ttl(p + "a") <= 100
    assert r.delete(p + "a", p + "b", p + "none") == 2
    try:
        r.incr(p + "k")
        raise AssertionError("INCR of a non-number answered")
    except redis.ResponseError as e:
        assert "not an integer" in str(e), e
    # A pipeline: replies in order, each write seen by the reads after it.
    pipe = r.pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"{p}pipe{i % 7}", i)
        pipe.get(f"{p}pipe{i % 7}")
    out = pipe.execute()
    assert out == [x for i in range(200) for x in (True, str(i).encode())], out[:6]
    info = r.info("server")
    assert "redis_version" in info, info
    r.close()

# Client-side caching (RESP3): a cached read, then a write through another
# connection invalidates it, and the next read sees the new value.
writer = redis.Redis(host=host, port=port, password=password)
cached = redis.Redis(host=host, port=port, protocol=3, password=password,
                     cache_config=CacheConfig())
writer.set(f"{RUN}:csc:k", "1")
assert cached.get(f"{RUN}:csc:k") == b"1"
assert cached.get(f"{RUN}:csc:k") == b"1"  # from the local cache
assert cached.get_cache().size >= 1, "nothing cached"
# Its own write: the next read sees it at once (the invalidation comes with
# the write's reply, not later from the nodes).
cached.set(f"{RUN}:csc:k", "own")
assert cached.get(f"{RUN}:csc:k") == b"own", "read its own write from a stale cache"
writer.set(f"{RUN}:csc:k", "2")
deadline("the cached value to be invalidated", lambda: cached.get(f"{RUN}:csc:k") == b"2")
writer.delete(f"{RUN}:csc:k")
deadline("the delete to be seen", lambda: cached.get(f"{RUN}:csc:k") is None)
print("redis-py: RESP2, RESP3, pipelines and client-side caching passed")
