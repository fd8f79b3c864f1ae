-- GET of random keys from a preloaded set: PREFIX0 .. PREFIX(KEYS-1).
-- ZIPF=s (s > 0) picks keys by a Zipf distribution of exponent s (hot
-- keys: rank r is drawn with probability proportional to 1/r^s) instead of
-- uniformly; ranks are scattered over the key space so that the hot keys
-- do not all sit on one node.
local keys = tonumber(os.getenv("KEYS") or "100000")
local prefix = os.getenv("PATH_PREFIX") or "/?key="
local kprefix = os.getenv("KEY_PREFIX") or "key:"
local zipf = tonumber(os.getenv("ZIPF") or "0")
math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % 100000)

local cdf = nil
if zipf > 0 then
  cdf = {}
  local sum = 0
  for r = 1, keys do
    sum = sum + 1 / (r ^ zipf)
    cdf[r] = sum
  end
  for r = 1, keys do cdf[r] = cdf[r] / sum end
end

-- A rank drawn from the Zipf distribution (binary search of the CDF).
local function zipf_rank()
  local u = math.random()
  local lo, hi = 1, keys
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- A multiplier coprime with any key count that is not a multiple of it:
-- rank -> index is then a permutation of 0 .. keys-1.
local SCATTER = 2654435761

request = function()
  local k
  if cdf then
    k = ((zipf_rank() - 1) * SCATTER) % keys
  else
    k = math.random(0, keys - 1)
  end
  return wrk.format("GET", prefix .. kprefix .. k)
end
done = function(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("RESULT requests=%d non2xx=%d connect_err=%d read_err=%d write_err=%d timeout=%d p50_us=%d p99_us=%d duration_us=%d\n",
    summary.requests, non2xx, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), summary.duration))
end
