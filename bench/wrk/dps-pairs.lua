-- wrk script: Data Plane Signaling start+terminate pairs (issue #5's benchmark).
--
-- Every connection alternates: a provider-pull start with a fresh processId and messageId, then a
-- terminate of a flow whose start was answered. Flow ids travel through a per-thread queue, so a
-- terminate always names a flow that exists and is STARTED. A pair is counted when its terminate
-- is answered 200; any other status is counted as an error. wrk's latency figures are per request
-- (a start or a terminate), not per pair.
--
--   wrk -t1 -c32 -d10s --latency -s bench/wrk/dps-pairs.lua http://127.0.0.1:3500
--   BASE=/api/v1 (default) sets the DPS base path.

local base = os.getenv("BASE") or "/api/v1"
local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

function init(args)
   n = 0
   pairs_done = 0
   starts_done = 0
   errors = 0
   pending = {}
   head, tail = 1, 0
   tag = string.format("%d-%d-%d", os.time(), math.random(1, 1000000000), id)
end

local start_path = base .. "/dataflows/start"
local headers = { ["Content-Type"] = "application/json" }

function request()
   if head <= tail then
      local flow = pending[head]
      pending[head] = nil
      head = head + 1
      return wrk.format("POST", base .. "/dataflows/" .. flow .. "/terminate", headers,
         '{"messageId":"t-' .. flow .. '","reason":"bench"}')
   end
   n = n + 1
   return wrk.format("POST", start_path, headers,
      '{"messageId":"m-' .. tag .. '-' .. n .. '","participantId":"did:web:provider",' ..
      '"counterPartyId":"did:web:consumer","dataspaceContext":"bench",' ..
      '"processId":"p-' .. tag .. '-' .. n .. '","agreementId":"agreement-1",' ..
      '"datasetId":"dataset-1","profile":"https://w3id.org/dspace-sig/profile/http-pull"}')
end

function response(status, hdrs, body)
   if status ~= 200 then
      errors = errors + 1
      return
   end
   local flow = string.match(body, '"dataFlowId":"([^"]+)"')
   if flow and string.find(body, '"state":"STARTED"', 1, true) then
      starts_done = starts_done + 1
      tail = tail + 1
      pending[tail] = flow
   elseif flow and string.find(body, '"state":"TERMINATED"', 1, true) then
      pairs_done = pairs_done + 1
   else
      errors = errors + 1
   end
end

function done(summary, latency, requests)
   local p, s, e = 0, 0, 0
   for _, t in ipairs(threads) do
      p = p + t:get("pairs_done")
      s = s + t:get("starts_done")
      e = e + t:get("errors")
   end
   local secs = summary.duration / 1e6
   io.write(string.format("pairs %d  starts %d  errors %d  (non-2xx per wrk: %d)\n",
      p, s, e, summary.errors.status))
   io.write(string.format("pairs/s %.0f  requests/s %.0f\n", p / secs, summary.requests / secs))
   io.write(string.format("request latency p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms\n",
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000))
end
