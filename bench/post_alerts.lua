-- wrk script: every request is a new Alertmanager v4 delivery with ALERTS distinct firing alerts, so the
-- store does real work (new payload, new alerts) on every request. WORKLOAD decides the group each
-- delivery belongs to:
--   storm     one of GROUPS Alertmanager groups (default 100): once a group's incident is open, a delivery
--             adds members to it;
--   distinct  a new group per request: every delivery opens an incident.
local alerts_per_request = tonumber(os.getenv("ALERTS") or "1")
local workload = os.getenv("WORKLOAD") or "distinct"
local groups = tonumber(os.getenv("GROUPS") or "100")
local thread_id = 0
local counter = 0

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end

function init(args)
  counter = 0
  math.randomseed(os.time() + tid)
end

local function alert(alertname, n)
  return string.format(
    '{"status":"firing","labels":{"alertname":"%s","severity":"warning","namespace":"bench",' ..
    '"pod":"pod-%s"},"annotations":{"summary":"benchmark alert %s"},"startsAt":"2026-11-23T08:00:00.000Z",' ..
    '"endsAt":"0001-01-01T00:00:00Z","generatorURL":"http://prometheus/graph","fingerprint":"%s"}',
    alertname, n, n, n)
end

function request()
  counter = counter + 1
  local unique = string.format("%d-%d-%d", tid, counter, math.random(1, 1000000000))
  local group
  if workload == "storm" then
    group = string.format("g%d", math.random(0, groups - 1))
  else
    group = "g" .. unique
  end
  local alertname = "BenchAlert-" .. group
  local parts = {}
  for i = 1, alerts_per_request do
    parts[i] = alert(alertname, string.format("%s-%d", unique, i))
  end
  local body = '{"version":"4","status":"firing","receiver":"responder",' ..
    '"groupKey":"{}:{alertname=\\"' .. alertname .. '\\"}","truncatedAlerts":0,' ..
    '"groupLabels":{"alertname":"' .. alertname .. '"},"commonLabels":{"alertname":"' .. alertname .. '"},' ..
    '"commonAnnotations":{},"externalURL":"http://alertmanager:9093","alerts":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format("POST", "/webhooks/alertmanager", {["Content-Type"] = "application/json"}, body)
end
