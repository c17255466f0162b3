-- Argo CD health check of archiver.uptime.dev/DeletionRequest (argocd-cm key
-- resource.customizations.health.archiver.uptime.dev_DeletionRequest).
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

-- The erasure is one run with a receipt: its phase is its health.
local phase = obj.status.phase
if phase == "Completed" then
  local message = describe(ready)
  if obj.status.receiptSha256 ~= nil then
    message = message .. " (receipt sha256 " .. obj.status.receiptSha256 .. ")"
  end
  return result("Healthy", message)
end
if phase == "Failed" then
  if obj.status.lastFailure ~= nil and obj.status.lastFailure ~= "" then
    return result("Degraded", "Failed (retrying with backoff): " .. obj.status.lastFailure)
  end
  return result("Degraded", describe(ready))
end
if phase == "Running" or phase == "Pending" then
  return result("Progressing", phase .. ": " .. describe(ready))
end
if ready.status == "False" and ready.reason == "ReconcileFailed" then
  return result("Degraded", describe(ready))
end
return result("Progressing", "Waiting for the erasure to start (" .. describe(ready) .. ")")
