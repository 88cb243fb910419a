# Renders bench/results/*.json as the Markdown results table of docs/BENCHMARKS.md.
def round2: . * 100 | round / 100;
def ms: if . == null then "–" else (. * 1000 | round / 1000 | tostring) end;
def krps: if . == null then "–" else (. / 100 | round / 10 | tostring) + "k" end;
def mb: if . == null then "–" else (. / 1024 * 10 | round / 10 | tostring) end;
def cpu: if . == null then "–" else (. * 1000 | round / 1000 | tostring) end;
def ratio: if . == null then "–" else (round2 | tostring) + "×" end;
def plus: if . == null then "–" elif . >= 0 then "+" + ms else ms end;
def cell($c):
  if $c == null then "not run"
  elif $c.median == null then "\($c.name): **\($c.status)**"
  else "\($c.name): \($c.median.rps | krps) req/s, p50 \($c.median.p50_ms | ms) ms, p99 \($c.median.p99_ms | ms) ms"
       + (if $c.status == "ok" then "" else " (**\($c.status)**)" end)
  end;
def fcell($c):
  if $c == null then "not run"
  elif $c.median == null then "\($c.name): **\($c.status)**"
  else "\($c.name): p50 \($c.median.p50_ms | ms) ms, p99 \($c.median.p99_ms | ms) ms" end;
def met($cmp):
  if $cmp.met == true then "yes"
  elif $cmp.met == false then "**no**"
  elif $cmp.met_note then $cmp.met_note
  elif $cmp.target == "reference only" then "—"
  else "not judged: ours not measured" end;

. as $r
| ($r.cases | map({key: .id, value: .}) | from_entries) as $cases
| "_\($r.mode) run of \($r.generated_at): warm-up \($r.method.warmup_s) s, then \($r.method.runs) × \($r.method.duration_s) s per case, median run kept; `\($r.method.load)`; servers on CPU \($r.method.server_cpu), wrk on CPU \($r.method.load_cpu). \($r.versions.nginx), \($r.versions.wrk), \($r.versions.rustc), micro commit \($r.versions.micro_commit). Machine: \($r.machine.cpu), \($r.machine.cores) cores, load average \($r.machine.loadavg_start) at start. Raw numbers: `\($r.raw)` and the CSV beside it._",
  "",
  "| # | Benchmark | Ours | Peer | Ratio (ours/peer req/s) | Target | Met? |",
  "|---|---|---|---|---|---|---|",
  ($r.comparisons[] | select(.kind != "added_latency")
   | "| \(.bench) | \(.title) | \(cell($cases[.ours])) | \(cell($cases[.peer])) | \(.ratio | ratio)"
     + (if .added_p50_ms_closed_loop != null
        then "; added p50 \(.added_p50_ms_closed_loop | plus) ms, p99 \(.added_p99_ms_closed_loop | plus) ms (closed loop)"
        else "" end)
     + " | \(.target) | \(met(.)) |"),
  "",
  "Per case (median run). Server CPU is CPU-milliseconds per 1,000 requests, of the process under test (front) and of every server-side process of the case (all); RSS is idle once ready and after load. With every server process on one core, req/s is also req/s per core.",
  "",
  "| Case | req/s | p50 ms | p99 ms | CPU ms/1k req (front / all) | RSS MB (idle → after load) | Errors |",
  "|---|---|---|---|---|---|---|",
  ($r.cases[] | select(.fixed_rate == null)
   | if .median == null
     then "| \(.id): \(.name) | \(.status) | | | | | |"
     else "| \(.id): \(.name) | \(.median.rps | floor) | \(.median.p50_ms | ms) | \(.median.p99_ms | ms) | \(.median.cpu_ms_per_1k_front | cpu) / \(.median.cpu_ms_per_1k_all | cpu) | \(.rss_idle_kb | mb) → \(.median.rss_load_kb | mb) | \(.median.errors) |"
     end),
  "",
  "**Fixed rate** (`\($r.method.fixed_rate)`), the method Dapr's published figures use; servers on CPU \($r.method.server_cpu), load on CPU \($r.method.load_cpu):",
  "",
  "| # | What | Ours | Reference | Added p50 | Added p99 | Target | Met? |",
  "|---|---|---|---|---|---|---|---|",
  ($r.comparisons[] | select(.kind == "added_latency")
   | "| \(.bench) | \(.title) | \(fcell($cases[.ours])) | \(fcell($cases[.peer])) | \(.added_p50_ms | plus) ms | \(.added_p99_ms | plus) ms | \(.target) | \(met(.)) |"),
  "",
  "| Case (fixed rate) | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | CPU ms/1k req (front / all) | Errors |",
  "|---|---|---|---|---|---|---|---|---|",
  ($r.cases[] | select(.fixed_rate != null)
   | if .median == null
     then "| \(.id): \(.name) | \(.status) | | | | | | | |"
     else "| \(.id): \(.name) | \(.median.rps | round) | \(.median.p50_ms | ms) | \(.median.p90_ms | ms) | \(.median.p99_ms | ms) | \(.median.p999_ms | ms) | \(.median.max_ms | ms) | \(.median.cpu_ms_per_1k_front | cpu) / \(.median.cpu_ms_per_1k_all | cpu) | \(.median.errors) |"
     end)
