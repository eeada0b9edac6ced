-- wrk script: every request is a new Alertmanager v4 delivery with ALERTS distinct firing alerts,
-- so the store does real work (new payload, new alerts, new incidents, new jobs) on every request.
local alerts_per_request = tonumber(os.getenv("ALERTS") or "1")
local thread_id = 0
local counter = 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function init(args)
  counter = 0
end

local function alert(n)
  return string.format(
    '{"status":"firing","labels":{"alertname":"BenchAlert","severity":"warning","namespace":"bench",' ..
    '"pod":"pod-%s"},"annotations":{"summary":"benchmark alert %s"},"startsAt":"2026-11-23T08:00:00.000Z",' ..
    '"endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus/graph","fingerprint":"%s"}', n, n, n)
end

function request()
  counter = counter + 1
  local parts = {}
  for i = 1, alerts_per_request do
    parts[i] = alert(string.format("%d-%d-%d-%d", tid, counter, i, math.random(1, 1000000000)))
  end
  local body = '{"version":"4","status":"firing","receiver":"responder","groupKey":"{}:{alertname=\\"BenchAlert\\"}",' ..
    '"truncatedAlerts":0,"groupLabels":{"alertname":"BenchAlert"},"commonLabels":{},"commonAnnotations":{},' ..
    '"externalURL":"http://alertmanager:9093","alerts":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/webhooks/alertmanager", {["Content-Type"] = "application/json"}, body)
end
