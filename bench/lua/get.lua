-- GET of random keys from a preloaded set: key:0 .. key:(KEYS-1).
local keys = tonumber(os.getenv("KEYS") or "100000")
local prefix = os.getenv("PATH_PREFIX") or "/?key="
math.randomseed(os.time())
request = function()
  return wrk.format("GET", prefix .. "key:" .. math.random(0, keys - 1))
end
done = function(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("RESULT requests=%d non2xx=%d connect_err=%d read_err=%d write_err=%d timeout=%d p50_us=%d p99_us=%d duration_us=%d\n",
    summary.requests, non2xx, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
