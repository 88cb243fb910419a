# Renders bench/results/edge-*.json (bench/edge) as the edge table of docs/BENCHMARKS.md.
def ms: if . == null then "–" else (. * 1000 | round / 1000 | tostring) end;
def krps: if . == null then "–" else (. / 100 | round / 10 | tostring) + "k" end;
def cpu: if . == null then "–" else (. * 1000 | round / 1000 | tostring) end;
def cell($c):
  if $c == null then "not run"
  elif $c.median == null then "\($c.name): **\($c.status)**"
  else "\($c.name): \($c.median.rps | krps) req/s, p50 \($c.median.p50_ms | ms) ms, p99 \($c.median.p99_ms | ms) ms"
       + (if $c.status == "ok" then "" else " (**\($c.status)**)" end)
  end;
def rps($c): if $c == null or $c.median == null or $c.status != "ok" then null else $c.median.rps end;

. as $r
| ($r.cases | map({key: .id, value: .}) | from_entries) as $cases
| [
    {bench: "E1", title: "Gateway pass-through over TLS, keep-alive (B1-TLS)", ours: "e1.ours", peer: "e1.nginx", target: 1.0,
     target_text: "≥ 1.0× nginx TLS"},
    {bench: "E2", title: "Full TLS handshakes per second (a new connection per request)", ours: "e2.ours", peer: "e2.nginx",
     target: 0.8, target_text: "≥ 0.8× nginx TLS"},
    {bench: "E3", title: "Metering and a rate limit on, vs both off (same gateway)", ours: "e3.ours", peer: "e3.off",
     target: 0.95, target_text: "≥ 0.95× off"},
    {bench: "E4", title: "Cached answers", ours: "e4.ours", peer: "e4.nginx", target: 1.5,
     target_text: "≥ 1.5× nginx proxy_cache"}
  ] as $rows
| "_\($r.mode) run of \($r.generated): warm-up \($r.warmup_s) s, then \($r.runs) × \($r.duration_s) s per case, median run kept; `wrk -t1 -c\($r.connections) --latency` (HTTP/1.1; over TLS for E1 and E2, without session resumption); servers on CPU 0, wrk on CPU 1. \($r.nginx), \($r.openssl), \($r.rustc), micro commit \($r.commit). Machine: \($r.machine.cpu), \($r.machine.cores) cores, load average \($r.machine.loadavg_start) at start. Raw numbers: `bench/results/edge-latest.json`._",
  "",
  "| # | Benchmark | Ours | Peer | Ratio (ours/peer req/s) | Target | Met? |",
  "|---|---|---|---|---|---|---|",
  ($rows[] | . as $row
   | (rps($cases[$row.ours])) as $o | (rps($cases[$row.peer])) as $p
   | (if $o != null and $p != null and $p > 0 then $o / $p else null end) as $ratio
   | "| \($row.bench) | \($row.title) | \(cell($cases[$row.ours])) | \(cell($cases[$row.peer])) | "
     + (if $ratio == null then "–" else ($ratio * 100 | round / 100 | tostring) + "×" end)
     + " | \($row.target_text) | "
     + (if $ratio == null then "not judged" elif $ratio >= $row.target then "yes" else "**no**" end) + " |"),
  "",
  "| Case | req/s | p50 ms | p99 ms | CPU ms/1k req (front / all) | Errors |",
  "|---|---|---|---|---|---|",
  ($r.cases[] | select(.median != null)
   | "| \(.id): \(.name) | \(.median.rps | floor) | \(.median.p50_ms | ms) | \(.median.p99_ms | ms) | \(.median.cpu_ms_per_1k_front | cpu) / \(.median.cpu_ms_per_1k_all | cpu) | \(.median.errors) |")
