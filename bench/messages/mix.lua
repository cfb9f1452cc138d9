-- 90% GET of preloaded digests, 10% POST of distinct messages.
local digests = dofile(os.getenv("DIGESTS") or "digests.lua")
local counter = 0
local threads = {}
local run = os.time()

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function request()
  counter = counter + 1
  if counter % 10 == 0 then
    local body = string.format('{"message":"mix %d-%d-%d"}', run, tid, counter)
    return wrk.format("POST", "/messages", {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET", "/messages/" .. digests[(counter % #digests) + 1])
end
