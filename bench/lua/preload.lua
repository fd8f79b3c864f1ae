-- Writes KEY_PREFIX0 .. KEY_PREFIX(KEYS-1) (default prefix key:) once each (VALUE_SIZE-byte values), split
-- over wrk's threads, then stops. Run with -t T -c T and a generous -d.
local keys = tonumber(os.getenv("KEYS") or "100000")
local size = tonumber(os.getenv("VALUE_SIZE") or "100")
local threads_n = tonumber(os.getenv("THREADS") or "1")
local kprefix = os.getenv("KEY_PREFIX") or "key:"
local body = string.rep("v", size)
-- `first` is set in each thread's own Lua state by setup(); it must stay
-- a global for thread:set() to reach it.
local counter = 0
local idx = 0
setup = function(thread)
  thread:set("first", counter)
  counter = counter + 1
end
init = function(args)
  idx = first
end
request = function()
  local k = idx
  idx = idx + threads_n
  return wrk.format("POST", "/?key=" .. kprefix .. k, nil, body)
end
response = function(status, headers, body)
  if idx >= keys then
    wrk.thread:stop()
  end
end
