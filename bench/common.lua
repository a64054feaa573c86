-- common.lua — shared by the wrk workload scripts (nonstream.lua, stream.lua).
--
-- load_request(body_file, tokens) makes every wrk request the same
-- POST /v1/chat/completions with the body read once from bench/<body_file>
-- and x-mock-tokens set, so mockllm's reply size is fixed.
--
-- done() prints one machine-readable line, "WRK_JSON {...}", after wrk's own
-- --latency text. bench/run.sh parses that line rather than the text: the
-- figures are exact (latencies in microseconds, integer counts) instead of
-- wrk's rounded "1.23ms". The script sets no response() callback on purpose:
-- one makes wrk collect every body and costs CPU 1 time that mockllm needs.

local M = {}

-- Directory of this script, so the body files resolve from any cwd.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

function M.load_request(body_file, tokens)
	local f = assert(io.open(here .. body_file, "rb"))
	wrk.method = "POST"
	wrk.body = f:read("*a")
	f:close()
	wrk.headers["Content-Type"] = "application/json"
	wrk.headers["x-mock-tokens"] = tostring(tokens)
	-- tollgate (budgets on) authenticates this key; the others ignore it
	wrk.headers["Authorization"] = "Bearer tg-bench-key"
end

function M.done(summary, latency, requests)
	local e = summary.errors
	io.write(string.format(
		'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
		'"status_errors":%d,"connect_errors":%d,"read_errors":%d,' ..
		'"write_errors":%d,"timeouts":%d,' ..
		'"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
		'"max_us":%d,"mean_us":%.1f}\n',
		summary.requests, summary.duration, summary.bytes,
		e.status, e.connect, e.read, e.write, e.timeout,
		latency:percentile(50), latency:percentile(90),
		latency:percentile(99), latency:percentile(99.9),
		latency.max, latency.mean))
end

return M
