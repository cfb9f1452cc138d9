-- GET /messages/<digest> of the preloaded "bench-0" .. "bench-999" (digests.lua).
local digests = dofile(os.getenv("DIGESTS") or "digests.lua")
local counter = 0

function request()
  counter = counter + 1
  return wrk.format("GET", "/messages/" .. digests[(counter % #digests) + 1])
end
