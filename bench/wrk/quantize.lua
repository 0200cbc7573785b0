-- wrk script for bench/service.py: POST one prepared request body, over and over,
-- and count the answers by HTTP status.
--
--   wrk -t2 -c256 -d10s --latency --timeout 30s -s bench/wrk/quantize.lua \
--       http://127.0.0.1:8000/quantize -- /tmp/svcbench/body.json [content-type]
--
-- The body file comes from the first script argument (after --) or the WRK_BODY
-- environment variable; the Content-Type from the second argument, WRK_CONTENT_TYPE,
-- or application/json. The URL's path picks the route (/quantize, /dequantize).
-- On exit one line is added to wrk's report:
--   statuses: 200=1234 429=5
-- (every answer wrk read, all threads together; wrk itself only reports
-- "Non-2xx or 3xx responses: N").

local threads = {}

local function slurp(path)
   local f = assert(io.open(path, "rb"), "cannot open body file " .. tostring(path))
   local s = f:read("*a")
   f:close()
   return s
end

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1] or os.getenv("WRK_BODY")
   assert(path and path ~= "", "give the body file as the first script argument or in WRK_BODY")
   wrk.method = "POST"
   wrk.body = slurp(path)
   wrk.headers["Content-Type"] = args[2] or os.getenv("WRK_CONTENT_TYPE") or "application/json"
   statuses = {}
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local total, keys = {}, {}
   for _, t in ipairs(threads) do
      local s = t:get("statuses") or {}
      for code, n in pairs(s) do
         if total[code] == nil then
            total[code] = 0
            table.insert(keys, code)
         end
         total[code] = total[code] + n
      end
   end
   table.sort(keys)
   local parts = {}
   for _, code in ipairs(keys) do
      table.insert(parts, string.format("%d=%d", code, total[code]))
   end
   io.write("statuses: " .. table.concat(parts, " ") .. "\n")
end
