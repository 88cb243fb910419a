// bench/moleculer/caller.js: the Moleculer side of Micro's benchmark B2 (service-to-service RPC
// between separate processes, registry-resolved).
//
//   NATS_URL=nats://127.0.0.1:4222 node caller.js [--inflight N] [--secs S] [--warmup W]
//                                                [--wait-timeout T]
//
// A broker of its own (same options as service.js, see common.js) waits up to T seconds (default
// 20) for the `greeter` service to be discovered, then keeps N calls (default 1) of
// greeter.hello({name: "Alice"}) outstanding, closed loop: each finished call starts the next.
// The first W seconds (default 1) are a warm-up and are not counted; the next S seconds (default
// 10) are. Then it prints ONE JSON line to stdout:
//
//   {"case":"rpc","target":"moleculer","ops":…,"secs":…,"rate":…,"p50_us":…,"p90_us":…,
//    "p99_us":…,"p999_us":…,"max_us":…,"errors":…,"inflight":N,"percentiles":[[0,us],…,[100,us]]}
//
// ops and errors count the calls that finished inside the measured window; latencies are in
// microseconds (process.hrtime.bigint(), nearest-rank percentiles of the successful calls).
// Diagnostics go to stderr; the exit status is 1 when no call succeeded.
"use strict";

const { createBroker } = require("./common");

function usage(msg) {
	if (msg) process.stderr.write(`caller.js: ${msg}\n`);
	process.stderr.write("usage: node caller.js [--inflight N] [--secs S] [--warmup W] [--wait-timeout T]\n");
	process.exit(2);
}

function parseArgs(argv) {
	const opts = { inflight: 1, secs: 10, warmup: 1, waitTimeout: 20 };
	const names = { "--inflight": "inflight", "--secs": "secs", "--warmup": "warmup", "--wait-timeout": "waitTimeout" };
	for (let i = 0; i < argv.length; i++) {
		let arg = argv[i];
		let value;
		const eq = arg.indexOf("=");
		if (eq > 0) {
			value = arg.slice(eq + 1);
			arg = arg.slice(0, eq);
		}
		if (arg === "-h" || arg === "--help") usage();
		const key = names[arg];
		if (!key) usage(`unknown argument: ${arg}`);
		if (value === undefined) value = argv[++i];
		const n = Number(value);
		if (value === undefined || !Number.isFinite(n) || n < 0) usage(`${arg} needs a number`);
		opts[key] = n;
	}
	if (!Number.isInteger(opts.inflight) || opts.inflight < 1) usage("--inflight must be an integer >= 1");
	if (opts.secs <= 0) usage("--secs must be > 0");
	return opts;
}

// A growable Float64Array of latencies in microseconds.
class Samples {
	constructor() {
		this.buf = new Float64Array(1 << 20);
		this.n = 0;
	}
	push(v) {
		if (this.n === this.buf.length) {
			const bigger = new Float64Array(this.buf.length * 2);
			bigger.set(this.buf);
			this.buf = bigger;
		}
		this.buf[this.n++] = v;
	}
	sorted() {
		return this.buf.subarray(0, this.n).sort();
	}
}

function percentile(sorted, p) {
	if (sorted.length === 0) return null;
	const rank = Math.ceil((p / 100) * sorted.length);
	return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

const round1 = (v) => (v === null ? null : Math.round(v * 10) / 10);

async function main() {
	const opts = parseArgs(process.argv.slice(2));
	const broker = createBroker("bench-caller");
	await broker.start();
	await broker.waitForServices("greeter", opts.waitTimeout * 1000);

	const params = { name: "Alice" };
	const samples = new Samples();
	let measuring = false;
	let stopped = false;
	let ops = 0;
	let errors = 0;
	let firstError = null;

	async function worker() {
		while (!stopped) {
			const t0 = process.hrtime.bigint();
			let ok = true;
			try {
				await broker.call("greeter.hello", params);
			} catch (err) {
				ok = false;
				if (measuring && !stopped && firstError === null) firstError = err;
			}
			if (!measuring || stopped) continue;
			if (ok) {
				ops++;
				samples.push(Number(process.hrtime.bigint() - t0) / 1000);
			} else {
				errors++;
			}
		}
	}

	const workers = [];
	for (let i = 0; i < opts.inflight; i++) workers.push(worker());

	await new Promise((resolve) => setTimeout(resolve, opts.warmup * 1000));
	measuring = true;
	const start = process.hrtime.bigint();
	await new Promise((resolve) => setTimeout(resolve, opts.secs * 1000));
	stopped = true;
	const secs = Number(process.hrtime.bigint() - start) / 1e9;
	// Calls still outstanding are not counted; give them a moment to finish (a peer that hangs
	// must not hang the benchmark).
	await Promise.race([Promise.all(workers), new Promise((resolve) => setTimeout(resolve, 5000).unref())]);

	const sorted = samples.sorted();
	const pct = [0, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100].map((p) => [p, round1(percentile(sorted, p))]);
	const at = (p) => round1(percentile(sorted, p));
	const result = {
		case: "rpc",
		target: "moleculer",
		ops,
		secs: Math.round(secs * 1000) / 1000,
		rate: Math.round((ops / secs) * 10) / 10,
		p50_us: at(50),
		p90_us: at(90),
		p99_us: at(99),
		p999_us: at(99.9),
		max_us: at(100),
		errors,
		inflight: opts.inflight,
		percentiles: pct,
	};
	if (firstError) process.stderr.write(`caller.js: ${errors} calls failed; first: ${firstError.message}\n`);
	process.stdout.write(JSON.stringify(result) + "\n");
	await broker.stop();
	return ops > 0 ? 0 : 1;
}

main().then(
	(code) => process.exit(code),
	(err) => {
		process.stderr.write(`caller.js: ${err && err.stack ? err.stack : err}\n`);
		process.exit(1);
	},
);
