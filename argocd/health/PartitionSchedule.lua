-- Argo CD health check of archiver.uptime.dev/PartitionSchedule (argocd-cm key
-- resource.customizations.health.archiver.uptime.dev_PartitionSchedule).
-- Runs in Argo CD's Lua VM: gopher-lua (Lua 5.1) with only the base and
-- table libraries (no string library). `obj` is the live object;
-- obj.status is nil until the operator first reports.
local hs = {}

local function condition(type_)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

-- "Type Reason: message", leaving out what is empty.
local function describe(c)
  local text = c.type
  if c.reason ~= nil and c.reason ~= "" then
    text = text .. " " .. c.reason
  end
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local function result(status, message)
  hs.status = status
  hs.message = message
  return hs
end

-- Paused with the annotation: the operator does not reconcile it at all.
if obj.metadata ~= nil and obj.metadata.annotations ~= nil
    and obj.metadata.annotations["archiver.uptime.dev/reconcile"] == "disabled" then
  return result("Suspended", "Reconciliation disabled (annotation archiver.uptime.dev/reconcile: disabled)")
end

if obj.status == nil then
  return result("Progressing", "Waiting for the operator to report status")
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  return result("Progressing", "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (observed: " .. tostring(observed) .. ")")
end

local ready = condition("Ready")
if ready == nil then
  return result("Progressing", "Waiting for the Ready condition")
end
if ready.status == "False" and ready.reason == "InvalidSpec" then
  return result("Degraded", describe(ready))
end

if obj.spec ~= nil and obj.spec.suspend == true then
  return result("Suspended", "spec.suspend is true: no partition is created or dropped (" .. describe(ready) .. ")")
end

-- A month up to now + createAheadDays has no partition: its rows would fail
-- to insert (there is never a default partition).
local covered = condition("Covered")
if covered ~= nil and covered.status == "False" then
  return result("Degraded", describe(covered))
end
-- A drop was refused (rows still inside their retention, or no single
-- RetentionPolicy): nothing was dropped, but old partitions pile up.
local blocked = condition("DropBlocked")
if blocked ~= nil and blocked.status == "True" then
  return result("Degraded", describe(blocked))
end
if ready.status == "Unknown" then
  return result("Progressing", describe(ready))
end
if ready.status ~= "True" then
  return result("Degraded", describe(ready))
end

return result("Healthy", describe(ready))
