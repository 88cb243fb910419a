# shellcheck shell=bash
# bench/lib.sh — process accounting shared by the benchmark scripts (sourced, not run).
# Reads /proc only: utime+stime and VmRSS of process trees.

tree_pids() { # PID... -> the pids and all their descendants
    local p c
    for p in "$@"; do
        [[ -d /proc/$p ]] || continue
        echo "$p"
        for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree_pids "$c"; done
    done
}

kill_tree() { # PID: TERM its process tree, KILL what is left after 3 s
    local pids i
    pids=$(tree_pids "$1")
    [[ -n $pids ]] || return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        # shellcheck disable=SC2086
        kill -0 $pids 2>/dev/null || return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
}

ticks_of() { # PID... -> TICKS: their utime+stime in clock ticks (builtins only: cheap for samplers)
    local p line rest
    local -a f
    TICKS=0
    for p in "$@"; do
        { read -r line <"/proc/$p/stat"; } 2>/dev/null || continue
        rest=${line##*) }
        read -ra f <<<"$rest"
        TICKS=$((TICKS + f[11] + f[12]))
    done
}

cpu_ticks() { # PID... -> utime+stime of the process trees, in clock ticks
    # shellcheck disable=SC2046
    ticks_of $(tree_pids "$@")
    echo "$TICKS"
}

rss_kb() { # PID... -> summed VmRSS of the process trees, in kB
    local total=0 p v
    for p in $(tree_pids "$@"); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

admin_cli() { # MICRO PROXY DATA_DIR HOME [PASSWORD]: logs the CLI in as that server's admin (PASSWORD, else
    # the password file in its data dir), keeping the CLI's config in HOME; run the CLI with HOME=that dir to
    # act as the admin
    mkdir -p "$4"
    HOME=$4 MICRO_DATA_DIR=$3 "$1" login --server "$2" ${5:+--password "$5"} >/dev/null
}

service_account() { # MICRO PROXY HOME NAME -> "MICRO_AUTH_ID=NAME MICRO_AUTH_SECRET=…" for `env`: a service
    # account made by the admin logged in under HOME (see admin_cli); registering needs an account
    local secret
    secret=svc-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    HOME=$3 "$1" auth create account "$4" --type service --secret "$secret" --server "$2" >/dev/null || return 1
    echo "MICRO_AUTH_ID=$4 MICRO_AUTH_SECRET=$secret"
}
