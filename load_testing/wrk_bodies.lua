-- wrk script for load_testing/benchmark.py: POSTs JSON bodies read from a file (one per line) in turn,
-- counts responses by status and prints one line "WRK_RESULT {json}" at the end.
-- Usage: wrk -t1 -c16 -d10s -s wrk_bodies.lua http://127.0.0.1:3000 -- bodies.jsonl /predict

local requests_ = {}
local next_index = 0
statuses = {} -- global: read back from each thread in done()
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  local path = args[2] or "/predict"
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(args[1]) do
    requests_[#requests_ + 1] = wrk.format("POST", path, headers, line)
  end
  assert(#requests_ > 0, "no request bodies in " .. tostring(args[1]))
end

function request()
  next_index = next_index % #requests_ + 1
  return requests_[next_index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[#counts + 1] = string.format('"%d": %d', status, n)
    end
  end
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
      .. '"statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, errors.connect, errors.read, errors.write, errors.timeout,
    table.concat(counts, ", ")
  ))
end
