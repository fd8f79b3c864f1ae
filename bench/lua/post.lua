-- POST of random keys from the preloaded set with a VALUE_SIZE-byte body.
local keys = tonumber(os.getenv("KEYS") or "100000")
local size = tonumber(os.getenv("VALUE_SIZE") or "100")
local body = string.rep("v", size)
math.randomseed(os.time() + 7)
request = function()
  return wrk.format("POST", "/?key=key:" .. math.random(0, keys - 1), nil, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d non2xx=%d connect_err=%d read_err=%d write_err=%d timeout=%d p50_us=%d p99_us=%d duration_us=%d\n",
    summary.requests, summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
