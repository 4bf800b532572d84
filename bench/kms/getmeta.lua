-- wrk script for KMS GetMeta (and the nginx static-file baseline): GET the path given on the command line,
-- count non-200 answers as errors and print a one-line summary that scripts/bench-kms.sh parses.
wrk.method = "GET"
wrk.headers["Accept"] = "application/json"

local non200 = 0
response = function(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end

done = function(summary, latency, requests)
  local errs = summary.errors
  local total_err = errs.connect + errs.read + errs.write + errs.status + errs.timeout
  io.write(string.format("RESULT requests=%d duration_s=%.2f rps=%.0f p50_ms=%.3f p99_ms=%.3f max_ms=%.3f errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000, total_err))
end
