-- `payrail bench`'s single-payout load (payrail_tools/bench_wrk.py): POST /api/v1/payouts,
-- round-robin over the level's projects, each request with its project's own key, a unique
-- gamertag and Idempotency-Key, and an amount drawn in [AMOUNT_MIN, AMOUNT_MAX].
-- Env: PROJECTS ("id=key,id=key,…"), AMOUNT_MIN, AMOUNT_MAX, RUN_TAG, SEED.
-- Each 201 answer's projectId and totalCost are read from its body, so the charge every
-- project saw can be checked against its balance afterwards; done() prints one line:
-- "wrk-result {json}".
local projects = {}
for id, key in string.gmatch(os.getenv("PROJECTS") or "", "([^=,]+)=([^,]+)") do
  projects[#projects + 1] = {id = id, key = key}
end
local amount_min = tonumber(os.getenv("AMOUNT_MIN") or "10")
local amount_max = tonumber(os.getenv("AMOUNT_MAX") or "500")
local run_tag = os.getenv("RUN_TAG") or "r"
local seed = tonumber(os.getenv("SEED") or "0")
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  threads[#threads + 1] = thread
end

function init(args)
  math.randomseed(seed * 1000 + tid)
  counter = 0
  statuses = {}
  charged = {}
  created = 0
  pending = {}
end

request = function()
  counter = counter + 1
  local p = projects[(counter + tid) % #projects + 1]
  local body = string.format('{"gamertag":"%s_t%d_%d","amount":%d,"projectId":"%s"}',
    run_tag, tid, counter, math.random(amount_min, amount_max), p.id)
  local key = string.format("%s-t%d-%d", run_tag, tid, counter)
  pending[key] = p.id .. "\t" .. p.key .. "\t" .. body
  return wrk.format("POST", "/api/v1/payouts", {["Content-Type"] = "application/json",
    ["apikey"] = p.key, ["Idempotency-Key"] = key}, body)
end

response = function(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  local sent_key = string.match(body, '"idempotencyKey":"([^"]+)"')
  if sent_key then pending[sent_key] = nil end
  if status == 201 then
    local project = string.match(body, '"projectId":"([^"]+)"')
    local cost = tonumber(string.match(body, '"totalCost":(%d+)'))
    if project and cost then
      charged[project] = (charged[project] or 0) + cost
      created = created + 1
    end
  end
end

local function json_map(map)
  local parts = {}
  for k, v in pairs(map) do parts[#parts + 1] = string.format('"%s":%d', k, v) end
  return "{" .. table.concat(parts, ",") .. "}"
end

done = function(summary, latency, requests)
  local all_statuses, all_charged, all_created = {}, {}, 0
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("statuses")) do all_statuses[k] = (all_statuses[k] or 0) + v end
    for k, v in pairs(thread:get("charged")) do all_charged[k] = (all_charged[k] or 0) + v end
    all_created = all_created + thread:get("created")
  end
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("pending")) do io.write("wrk-pending " .. k .. "\t" .. v .. "\n") end
  end
  local e = summary.errors
  io.write(string.format(
    'wrk-result {"requests":%d,"duration_s":%.6f,"created":%d,"statuses":%s,"charged":%s,' ..
    '"socket_errors":%d,"p50_ms":%.3f,"p95_ms":%.3f,"p99_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, all_created, json_map(all_statuses),
    json_map(all_charged), e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3))
end
