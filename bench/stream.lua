-- stream.lua — wrk workload (b): the same request with "stream":true
-- (bench/body-stream.json) and x-mock-tokens: 50, which mockllm answers as
-- SSE, one HTTP chunk per event (50 content events, plus the role, finish
-- and [DONE] events).
-- Usage: wrk -t1 -c50 -d10s --latency -s bench/stream.lua URL
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")
common.load_request("body-stream.json", 50)
done = common.done
