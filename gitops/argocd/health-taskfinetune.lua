-- Argo CD health of an anytasktune.io/TaskFineTune, from the status the operator writes.
--   Healthy      phase Succeeded: every sub-task's adapter is published
--   Degraded     phase Failed or Invalid, or condition Degraded=True (a sub-task failed
--                terminally while others still train)
--   Suspended    phase Suspended (spec.suspend: true)
--   Progressing  anything else: no status yet, a status older than the spec, Pending, Running
-- Installed through argocd-cm as resource.customizations.health.anytasktune.io_TaskFineTune
-- (see argocd-cm-health.yaml, generated from this file).
local hs = {status = "Progressing", message = "waiting for the operator"}
local st = obj.status
if st == nil or st.phase == nil then
  return hs
end

local progress = ""
if st.progress ~= nil and st.progress ~= "" then
  progress = " (" .. st.progress .. " sub-tasks succeeded)"
end

-- A status written for an older generation says nothing about the current spec.
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (st.observedGeneration == nil or st.observedGeneration < generation) then
  hs.message = "the operator has not observed generation " .. tostring(generation) .. " yet"
  return hs
end

local degraded = nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Degraded" and c.status == "True" then
      degraded = c
    end
  end
end

if st.phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = "Succeeded" .. progress
elseif st.phase == "Failed" or st.phase == "Invalid" then
  hs.status = "Degraded"
  hs.message = st.phase .. progress
  if degraded ~= nil and degraded.message ~= nil and degraded.message ~= "" then
    hs.message = hs.message .. ": " .. degraded.message
  end
elseif degraded ~= nil then
  hs.status = "Degraded"
  hs.message = (degraded.message or degraded.reason or "Degraded") .. progress
elseif st.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true" .. progress
else
  hs.status = "Progressing"
  hs.message = st.phase .. progress
end
return hs
