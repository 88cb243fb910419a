// bench/moleculer/web.js: the moleculer-web peer of Micro's benchmark B3 (HTTP/JSON -> gateway ->
// RPC over NATS -> service -> JSON).
//
//   NATS_URL=nats://127.0.0.1:4222 PORT=3000 [HOST=127.0.0.1] [NODE_ID=api-1] node web.js
//
// A broker (same options as the others, see common.js) running only the moleculer-web API gateway,
// listening on HOST:PORT (default 127.0.0.1:3000), with one alias: POST /greeter/hello (JSON body,
// e.g. {"name":"Alice"}) calls greeter.hello, which service.js serves in another process. Request
// logging is off. Answers 503 until the greeter service has been discovered. Prints one "ready"
// line to stderr once listening; SIGTERM/SIGINT stop the broker.
"use strict";

const ApiGateway = require("moleculer-web");
const { createBroker } = require("./common");

const broker = createBroker("bench-web");

broker.createService({
	name: "api",
	mixins: [ApiGateway],
	settings: {
		port: Number(process.env.PORT || 3000),
		ip: process.env.HOST || "127.0.0.1",
		logRequest: null,
		logRequestParams: null,
		logResponse: null,
		logResponseData: null,
		log4XXResponses: false,
		logRouteRegistration: null,
		routes: [
			{
				path: "/",
				mappingPolicy: "restrict",
				autoAliases: false,
				logging: false,
				aliases: { "POST /greeter/hello": "greeter.hello" },
				bodyParsers: { json: true, urlencoded: false },
			},
		],
	},
});

broker.start().then(
	() => {
		const s = broker.getLocalService("api").settings;
		process.stderr.write(`web.js ready: node ${broker.nodeID}, http://${s.ip}:${s.port}/greeter/hello\n`);
	},
	(err) => {
		process.stderr.write(`web.js: cannot start: ${err && err.stack ? err.stack : err}\n`);
		process.exit(1);
	},
);
