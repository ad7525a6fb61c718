-- wrk script: POST /api/v1/payouts with a unique gamertag and Idempotency-Key per request,
-- 10 projects round-robin (prj0..prj9). Env: APIKEY, PROJECT_PREFIX, PAYOUT_PATH, NPROJ.
local counter = 0
local apikey = os.getenv("APIKEY") or ""
local prefix = os.getenv("PROJECT_PREFIX") or "prj"
local path = os.getenv("PAYOUT_PATH") or "/api/v1/payouts"
local nproj = tonumber(os.getenv("NPROJ") or "10")
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", string.format("%d%d", os.time() % 100000, threads))
end
request = function()
  counter = counter + 1
  local p = prefix .. tostring(counter % nproj)
  local body = string.format('{"gamertag":"g%s_%d","amount":100,"projectId":"%s"}', tid, counter, p)
  return wrk.format("POST", path, {["Content-Type"] = "application/json", ["apikey"] = apikey,
    ["Idempotency-Key"] = tid .. "-" .. counter}, body)
end
statuses = {}
response = function(status) statuses[status] = (statuses[status] or 0) + 1 end
done = function(summary, latency, requests)
  io.write(string.format("wrk: %d requests, %.1f req/s, p50 %.1f ms, p95 %.1f ms, p99 %.1f ms, non2xx %d\n",
    summary.requests, summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1e3,
    latency:percentile(95) / 1e3, latency:percentile(99) / 1e3, summary.errors.status))
end
