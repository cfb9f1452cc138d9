-- POST /messages with a distinct message per request: "<run>-<thread>-<n>".
local counter = 0
local threads = {}
local run = os.time()

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  local body = string.format('{"message":"wrk %d-%d-%d"}', run, tid, counter)
  return wrk.format("POST", "/messages", nil, body)
end
