// bench/moleculer/common.js: the broker options shared by service.js, caller.js and web.js.
//
// Every Moleculer peer of Micro's benchmarks is a separate broker process that talks to the others
// through a nats-server (NATS transporter, the "nats" npm client), with the logger, metrics and
// tracing off and the default JSON serializer, so the peer measured is plain "Moleculer RPC over
// NATS". The nats-server URL comes from the environment variable NATS_URL
// (default nats://127.0.0.1:4222).
"use strict";

const { ServiceBroker } = require("moleculer");

function natsUrl() {
	return process.env.NATS_URL || "nats://127.0.0.1:4222";
}

// brokerOptions(defaultNodeID): the options of one benchmark broker. NODE_ID overrides the node ID;
// the default gets the pid appended so that several copies can run side by side.
function brokerOptions(defaultNodeID) {
	return {
		namespace: process.env.MOLECULER_NAMESPACE || "",
		nodeID: process.env.NODE_ID || `${defaultNodeID}-${process.pid}`,
		transporter: { type: "NATS", options: { url: natsUrl() } },
		serializer: "JSON",
		logger: false,
		metrics: { enabled: false },
		tracing: { enabled: false },
		cacher: null,
	};
}

function createBroker(defaultNodeID) {
	return new ServiceBroker(brokerOptions(defaultNodeID));
}

module.exports = { natsUrl, brokerOptions, createBroker };
