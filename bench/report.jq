# Assembles bench/results/*.json from the per-case objects written by bench/run.
# Input: the array of cases (jq -s). Arguments: see the jq call at the end of bench/run.
. as $cases
| def case($id): ($cases | map(select(.id == $id)) | .[0]);
  def ok($c): $c != null and $c.status == "ok";
  def ratio($a; $b): if ok($a) and ok($b) then $a.median.rps / $b.median.rps else null end;
  def added($a; $b; f): if ok($a) and ok($b) then ($a.median | f) - ($b.median | f) else null end;
{
  generated_at: $generated,
  mode: $mode,
  raw: "bench/results/\($out_name).json",
  method: {
    load: "wrk -t1 -c\($conns) --latency, closed loop",
    warmup_s: $warmup, runs: $runs, duration_s: $duration,
    kept: "the run with the median req/s",
    server_cpu: $server_cpu, load_cpu: $load_cpu,
    cpu_accounting: "utime+stime from /proc/<pid>/stat of the process tree, before and after each run; front = the process under test, all = every server-side process of the case",
    rss: "VmRSS summed over the front process tree: idle once ready, and after the last run",
    fixed_rate: $fixed_rate
  },
  machine: {cpu: $cpu, cores: $cores, kernel: $kernel, loadavg_start: $loadavg_start, loadavg_end: $loadavg_end},
  versions: ({nginx: $nginx, wrk: $wrk, rustc: $rustc, micro_commit: $commit, micro_build: $micro_build} + {peers: $peers}),
  comparisons: [
    (case("b0.floor") as $o | case("b0.nginx") as $p |
     {bench: "B0", title: "HTTP floor", ours: "b0.floor", peer: "b0.nginx",
      ratio: ratio($o; $p), target: "reference only", met: null}),
    (case("b1.ours") as $o | case("b1.nginx") as $p | ratio($o; $p) as $r |
     {bench: "B1", title: "Gateway pass-through HTTP proxy", ours: "b1.ours", peer: "b1.nginx",
      ratio: $r, target: "≥ 1.25× nginx throughput", target_ratio: 1.25,
      met: (if $r == null then null else $r >= 1.25 end)}),
    (case("b3.ours") as $o | case("b3.moleculer") as $p | ratio($o; $p) as $r |
     {bench: "B3", title: "Gateway end to end: HTTP/JSON → gateway → RPC → service → JSON",
      ours: "b3.ours", peer: "b3.moleculer",
      ratio: $r, target: "≥ 5× moleculer-web throughput", target_ratio: 5,
      met: (if $r == null then null else $r >= 5 end)}),
    (case("fr.b3.ours") as $o | case("fr.b3.direct") as $p | added($o; $p; .p50_ms) as $a |
     {bench: "B3", title: "Latency the gateway adds at \($o.fixed_rate.rate // 1000) req/s (1 KB, 16 conns)",
      ours: "fr.b3.ours", peer: "fr.b3.direct", kind: "added_latency",
      added_p50_ms: $a, added_p99_ms: added($o; $p; .p99_ms),
      target: "added p50 < 0.1 ms at 1,000 req/s", target_added_p50_ms: 0.1,
      met: (if $a == null then null else $a < 0.1 end)}),
    (case("fr.b3.moleculer") as $o | case("fr.b3.direct") as $p | added($o; $p; .p50_ms) as $a |
     {bench: "B3", title: "Latency moleculer-web adds at the same rate (for comparison)",
      ours: "fr.b3.moleculer", peer: "fr.b3.direct", kind: "added_latency",
      added_p50_ms: $a, added_p99_ms: added($o; $p; .p99_ms),
      target: "reference only", met: null}),
    (case("b3.ours") as $o | case("b3.direct") as $p |
     {bench: "B3", title: "Gateway end to end vs a direct call to the floor (closed loop)",
      ours: "b3.ours", peer: "b3.direct",
      ratio: ratio($o; $p),
      added_p50_ms_closed_loop: added($o; $p; .p50_ms),
      added_p99_ms_closed_loop: added($o; $p; .p99_ms),
      target: "reference only", met: null})
  ],
  cases: ($cases | sort_by(.id))
}
