#!/usr/bin/env bash
# Runs the client's tests against a Micro server of its own: starts `micro server` in a
# temporary data dir on free ports, makes a namespace with an admin and two users through
# the HTTP API, exports the variables test/db.test.js reads, runs `node --test` and always
# stops the server.
#
#   clients/js/test/run-local.sh                     # every test
#   clients/js/test/run-local.sh test/db.test.js     # some
#
# The server binary: $MICRO_BIN, else $CARGO_TARGET_DIR/debug/micro, else the repo's
# target/debug/micro, else `micro` on the PATH.
set -euo pipefail

js_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo_dir="$(cd "$js_dir/../.." && pwd)"

bin="${MICRO_BIN:-}"
if [[ -z "$bin" ]]; then
  for candidate in "${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/debug/micro}" "$repo_dir/target/debug/micro"; do
    if [[ -n "$candidate" && -x "$candidate" ]]; then
      bin="$candidate"
      break
    fi
  done
fi
bin="${bin:-$(command -v micro || true)}"
if [[ -z "$bin" || ! -x "$bin" ]]; then
  echo "run-local.sh: no micro binary: build it (cargo build -p micro-cli) or set MICRO_BIN" >&2
  exit 1
fi

data_dir="$(mktemp -d "${TMPDIR:-/tmp}/micro-js-test.XXXXXX")"
server_pid=""

stop() {
  local status=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
      kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ $status -ne 0 && -f "$data_dir/server.log" ]]; then
    echo "--- the server's log (last 30 lines) ---" >&2
    tail -n 30 "$data_dir/server.log" >&2 || true
  fi
  rm -rf "$data_dir"
  exit "$status"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

admin_password="$(node -e 'process.stdout.write(require("crypto").randomBytes(12).toString("hex"))')"

# Port 0: the server picks free ports and prints them in its ready line.
MICRO_DATA_DIR="$data_dir/data" \
  MICRO_ADMIN_PASSWORD="$admin_password" \
  MICRO_API_ADDRESS=127.0.0.1:0 \
  MICRO_PROXY_ADDRESS=127.0.0.1:0 \
  MICRO_WEB_ADDRESS=off \
  "$bin" server >"$data_dir/server.out" 2>"$data_dir/server.log" &
server_pid=$!

api=""
for _ in $(seq 1 600); do
  api="$(sed -n 's/^micro server ready .*"api":"\([^"]*\)".*/\1/p' "$data_dir/server.out" 2>/dev/null | head -n 1)"
  [[ -n "$api" ]] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "run-local.sh: the server exited before it was ready" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z "$api" ]]; then
  echo "run-local.sh: the server was not ready within 60 s" >&2
  exit 1
fi

# The namespace and its accounts, made with the server admin's token; prints the
# variables for the tests.
vars="$(MICRO_API="$api" ADMIN_PASSWORD="$admin_password" node --input-type=module -e '
const api = process.env.MICRO_API;
const call = async (path, ns, body, token) => {
  const res = await fetch(api + path, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Micro-Namespace": ns, ...(token ? { Authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : {};
};
const secret = () => crypto.randomUUID().replace(/-/g, "");
const { access_token: token } = await call("/auth/token", "micro", { id: "admin", secret: process.env.ADMIN_PASSWORD });
const ns = "jsclient";
await call("/auth/create-namespace", "micro", { name: ns }, token);
const accounts = { ADMIN: ["owner", ["admin"]], USER: ["alice", []], OTHER: ["bob", []] };
const out = [`MICRO_API=${api}`, `MICRO_NAMESPACE=${ns}`];
for (const [key, [id, scopes]] of Object.entries(accounts)) {
  const s = secret();
  await call("/auth/generate", ns, { id, secret: s, type: "user", scopes }, token);
  out.push(`MICRO_${key}_ID=${id}`, `MICRO_${key}_PASSWORD=${s}`);
}
console.log(out.join("\n"));
')"
while IFS= read -r line; do
  export "${line?}"
done <<<"$vars"

echo "run-local.sh: server $api (pid $server_pid, $bin), namespace $MICRO_NAMESPACE"
cd "$js_dir"
if [[ $# -eq 0 ]]; then
  set -- test/
fi
node --test "$@"
