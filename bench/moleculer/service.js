// bench/moleculer/service.js: the Moleculer service of Micro's benchmarks B2 and B3.
//
//   NATS_URL=nats://127.0.0.1:4222 [NODE_ID=greeter-1] node service.js
//
// A broker (NATS transporter, logger/metrics/tracing off, JSON serializer; see common.js) with one
// service, `greeter`, whose action `hello` answers {message: "Hello " + name}. caller.js (B2) and
// web.js (B3) call it from their own processes over NATS. Prints one "ready" line to stderr once
// started; SIGTERM/SIGINT stop the broker.
"use strict";

const { createBroker } = require("./common");

const broker = createBroker("bench-service");

broker.createService({
	name: "greeter",
	actions: {
		hello(ctx) {
			return { message: "Hello " + ctx.params.name };
		},
	},
});

broker.start().then(
	() => process.stderr.write(`service.js ready: node ${broker.nodeID}, greeter.hello\n`),
	(err) => {
		process.stderr.write(`service.js: cannot start: ${err && err.stack ? err.stack : err}\n`);
		process.exit(1);
	},
);
