-- POSTs "bench-0" .. "bench-999" over and over (so the GET scripts find them all).
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  local body = string.format('{"message":"bench-%d"}', counter % 1000)
  counter = counter + 1
  return wrk.format("POST", "/messages", nil, body)
end
