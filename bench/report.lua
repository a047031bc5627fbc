-- wrk script: print a machine-readable summary after the run (bench/harness.py reads it).
-- Latencies are in microseconds. Requests are counted by wrk's own summary.
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "ENDPOINTSEC_BENCH {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, " ..
      "\"connect_errors\": %d, \"read_errors\": %d, \"write_errors\": %d, " ..
      "\"status_errors\": %d, \"timeouts\": %d, \"p50\": %d, \"p90\": %d, " ..
      "\"p99\": %d, \"p999\": %d, \"max\": %d, \"mean\": %.1f}\n",
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max, latency.mean))
end
