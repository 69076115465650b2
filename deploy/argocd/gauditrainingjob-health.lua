-- Argo CD health check for gaudi.scalestarter.dev/GaudiTrainingJob.
--
-- Reads what the gaudi-operator writes: status.phase, status.observedGeneration and the
-- conditions (InvalidSpec, Failed, Stalled, Restarting, Reconciling, Succeeded).
--
--   no status yet, or a spec change not yet observed         -> Progressing
--   InvalidSpec True, phase Failed, Stalled True              -> Degraded
--     (Stalled covers a restart that no node can take: NoFeasibleNode)
--   phase Suspended (spec.suspend: true)                      -> Suspended
--   phase Running, phase Succeeded                            -> Healthy
--   phase Pending, Starting, Restarting, Scaling              -> Progressing
--   any other phase                                           -> Unknown
--
-- Argo CD runs custom health checks with only Lua's base and table libraries (no string,
-- no math): this script uses nothing else.

local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function detail(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local function workers(status)
  if status.workers ~= nil and status.workers ~= "" then
    return status.workers .. " workers ready"
  end
  return "no workers ready"
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the gaudi-operator to report a status"
  return hs
end

local generation = tonumber(obj.metadata.generation)
local observed = tonumber(status.observedGeneration)
if generation ~= nil and observed ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the gaudi-operator to act on generation " .. tostring(generation)
    .. " (observed " .. tostring(observed) .. ")"
  return hs
end

local phase = status.phase

local invalid = condition(status, "InvalidSpec")
if is_true(invalid) then
  hs.status = "Degraded"
  hs.message = "Invalid spec: " .. detail(invalid, invalid.reason or "InvalidSpec")
  return hs
end

if phase == "Failed" then
  local failed = condition(status, "Failed")
  hs.status = "Degraded"
  hs.message = "Failed: " .. detail(failed, "the job failed")
  return hs
end

local stalled = condition(status, "Stalled")
local restarting = condition(status, "Restarting")
if not is_true(stalled) and is_true(restarting) and restarting.reason == "NoFeasibleNode" then
  stalled = restarting -- an operator from before the Stalled condition
end
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. detail(stalled, workers(status))
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "Suspended: spec.suspend is true, no workers run"
  return hs
end

if phase == "Running" then
  hs.status = "Healthy"
  hs.message = "Running: " .. workers(status)
  return hs
end

if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Succeeded: " .. detail(condition(status, "Succeeded"), "the job finished")
  return hs
end

if phase == "Pending" or phase == "Starting" or phase == "Restarting" or phase == "Scaling" then
  hs.status = "Progressing"
  local because = workers(status)
  if phase == "Restarting" then
    because = detail(restarting, because)
  end
  hs.message = phase .. ": " .. because
  return hs
end

hs.status = "Unknown"
hs.message = "Unknown phase " .. tostring(phase)
return hs
