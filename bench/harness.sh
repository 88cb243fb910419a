# shellcheck shell=bash
# bench/harness.sh — the closed-loop harness shared by bench/run and bench/edge (sourced after
# the script has set TMP, SERVER_CPU, LOAD_CPU, CONNS, RUNS, DURATION, WARMUP and READY_TIMEOUT,
# declared STARTED, PID and IDLE_RSS, and defined log): processes pinned to the server CPU,
# readiness polling, nginx configs, and wrk cases measured in turns with the median run kept.

# start NAME CMD... : run CMD pinned to the server CPU, output to $TMP/NAME.log
start() {
    local name=$1
    shift
    taskset -c "$SERVER_CPU" "$@" >"$TMP/$name.log" 2>&1 &
    PID[$name]=$!
    STARTED+=("$!")
}

alive() { kill -0 "${PID[$1]}" 2>/dev/null; }

log_tail() { tail -n "${2:-5}" "$TMP/$1.log" 2>/dev/null | sed "s/^/    $1: /" >&2 || true; }

# http_code METHOD URL [BODY] (https:// URLs trust the CA file $HTTP_CA, when set)
http_code() {
    local -a ca=()
    [[ -z ${HTTP_CA:-} ]] || ca=(--cacert "$HTTP_CA")
    if [[ $1 == POST ]]; then
        curl -s "${ca[@]}" -o /dev/null -w '%{http_code}' --max-time 1 -X POST \
            -H 'Content-Type: application/json' --data "$3" "$2" || true
    else
        curl -s "${ca[@]}" -o /dev/null -w '%{http_code}' --max-time 1 "$2" || true
    fi
}

# wait_http NAME WANT METHOD URL [BODY]: poll until the status is WANT ("any" = any answer),
# at most READY_TIMEOUT seconds, and fail early if process NAME died. Sets LAST_CODE.
LAST_CODE=000
wait_http() {
    local name=$1 want=$2 i
    shift 2
    for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
        LAST_CODE=$(http_code "$@")
        if [[ $want == any && $LAST_CODE != 000 ]] || [[ $LAST_CODE == "$want" ]]; then
            return 0
        fi
        alive "$name" || return 1
        sleep 0.1
    done
    return 1
}

# --- /proc accounting -----------------------------------------------------------------------

CLK_TCK=$(getconf CLK_TCK)

# nginx_conf NAME LISTEN LOCATION_BODY [HTTP_EXTRA]: a minimal one-worker config in $TMP/NAME
nginx_conf() {
    local dir=$TMP/$1
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log stderr crit;
events { worker_connections 1024; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    ${4:-}
    server {
        listen $2;
        location / { $3 }
    }
}
EOF
}

# --- measurement ----------------------------------------------------------------------------

declare -A C_URL=() C_LUA=() C_FRONT=() C_ALL=() C_BENCH=() C_SIDE=() C_NAME=() C_STATUS=()
mkdir -p "$TMP/runs" "$TMP/cases"

# define_case ID BENCH SIDE "DISPLAY NAME" URL LUA FRONT_NAME "ALL NAMES"
define_case() {
    C_BENCH[$1]=$2 C_SIDE[$1]=$3 C_NAME[$1]=$4 C_URL[$1]=$5 C_LUA[$1]=$6
    C_FRONT[$1]=$7 C_ALL[$1]=$8 C_STATUS[$1]=ok
}

# unavailable ID BENCH SIDE "DISPLAY NAME" "WHY": a case that cannot be measured in this run
unavailable() {
    log "$1: $5"
    jq -n -c --arg id "$1" --arg bench "$2" --arg side "$3" --arg name "$4" --arg status "$5" \
        '{id: $id, bench: $bench, side: $side, name: $name, status: $status}' >"$TMP/cases/$1.json"
}

pids_of() { local n; for n in $1; do echo "${PID[$n]}"; done; }

wrk_once() { # ID SECONDS -> the WRKJSON object on stdout
    local out
    out=$(timeout $(($2 + 30)) taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$CONNS" -d"${2}s" --latency -s "${C_LUA[$1]}" "${C_URL[$1]}" 2>&1) ||
        { echo "$out" >&2; return 1; }
    echo "$out" >>"$TMP/wrk-$1.txt"
    sed -n 's/^WRKJSON //p' <<<"$out"
}

measure_run() { # ID RUN
    local id=$1 run=$2 front all f0 a0 f1 a1 w
    front=$(pids_of "${C_FRONT[$id]}")
    all=$(pids_of "${C_ALL[$id]}")
    # shellcheck disable=SC2086
    f0=$(cpu_ticks $front) a0=$(cpu_ticks $all)
    w=$(wrk_once "$id" "$DURATION") || { C_STATUS[$id]="wrk failed"; return 0; }
    # shellcheck disable=SC2086
    f1=$(cpu_ticks $front) a1=$(cpu_ticks $all)
    # shellcheck disable=SC2086
    jq -c --argjson run "$run" --argjson clk "$CLK_TCK" \
        --argjson fticks $((f1 - f0)) --argjson aticks $((a1 - a0)) --argjson rss "$(rss_kb $front)" '
        (.err_connect + .err_read + .err_write + .err_timeout + .err_status) as $errors |
        {run: $run, requests, duration_s: (.duration_us / 1e6),
         rps: (.requests / (.duration_us / 1e6)),
         p50_ms: (.p50_us / 1000), p90_ms: (.p90_us / 1000), p99_ms: (.p99_us / 1000),
         max_ms: (.max_us / 1000), mean_ms: (.mean_us / 1000),
         errors: $errors, errors_detail: {connect: .err_connect, read: .err_read,
           write: .err_write, timeout: .err_timeout, status: .err_status},
         cpu_s_front: ($fticks / $clk), cpu_s_all: ($aticks / $clk),
         cpu_ms_per_1k_front: (if .requests > 0 then $fticks / $clk * 1e6 / .requests else null end),
         cpu_ms_per_1k_all: (if .requests > 0 then $aticks / $clk * 1e6 / .requests else null end),
         rss_load_kb: $rss}' <<<"$w" >"$TMP/runs/$id.$run.json"
    log "$id run $run: $(jq -r '"\(.rps | floor) req/s, p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, errors \(.errors)"' "$TMP/runs/$id.$run.json")"
}

# measure ID...: warm every case up, then RUNS rounds alternating the cases, so both sides of
# a comparison see the same machine noise; keep the median run of each case.
measure() {
    local id r
    for id in "$@"; do
        log "$id: warm-up ${WARMUP}s (${C_URL[$id]})"
        wrk_once "$id" "$WARMUP" >/dev/null || C_STATUS[$id]="wrk failed"
    done
    for ((r = 1; r <= RUNS; r++)); do
        for id in "$@"; do
            if [[ ${C_STATUS[$id]} == ok ]]; then measure_run "$id" "$r"; fi
        done
    done
    for id in "$@"; do
        local front
        front=${C_FRONT[$id]}
        if [[ ${C_STATUS[$id]} != ok ]]; then
            unavailable "$id" "${C_BENCH[$id]}" "${C_SIDE[$id]}" "${C_NAME[$id]}" "${C_STATUS[$id]}"
            continue
        fi
        jq -s -c --arg id "$id" --arg bench "${C_BENCH[$id]}" --arg side "${C_SIDE[$id]}" \
            --arg name "${C_NAME[$id]}" --arg url "${C_URL[$id]}" \
            --arg method "$([[ ${C_LUA[$id]} == *post* ]] && echo POST || echo GET)" \
            --argjson rss_idle "${IDLE_RSS[$front]:-null}" '
            (sort_by(.rps) | .[(length - 1) / 2 | floor]) as $median |
            {id: $id, bench: $bench, side: $side, name: $name, method: $method, url: $url,
             status: (if $median.errors > 0.01 * $median.requests
                      then "errors: \($median.errors) of \($median.requests) requests failed"
                      else "ok" end),
             rss_idle_kb: $rss_idle, median: $median, runs: .}' \
            "$TMP"/runs/"$id".*.json >"$TMP/cases/$id.json"
    done
}

