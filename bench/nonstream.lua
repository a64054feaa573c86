-- nonstream.lua — wrk workload (a): a 967-byte chat request (bench/body.json)
-- answered with ~1,046 bytes of JSON (x-mock-tokens: 158 on mockllm).
-- Usage: wrk -t1 -c50 -d10s --latency -s bench/nonstream.lua URL
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(here .. "common.lua")
common.load_request("body.json", 158)
done = common.done
