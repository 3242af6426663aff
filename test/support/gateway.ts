import { createApp, serveOptions } from "../../src/app.ts";
import { buildGateway } from "../../src/bootstrap.ts";
import { parseConfig } from "../../src/config/loader.ts";
import type { ClockUs } from "../../src/limits/store.ts";
import { Logger } from "../../src/log.ts";
import type { Runtime } from "../../src/runtime.ts";

export interface RunningGateway {
	readonly url: string;
	readonly gateway: Runtime;
	stop(): Promise<void>;
}

/** A gateway answering requests in-process, without a socket on its side. */
export interface HandledGateway {
	/** The app's answer to `request`, as the listening server would give it. */
	handle(request: Request): Promise<Response>;
	readonly gateway: Runtime;
	/** Releases what the gateway holds: health checks, watcher, calibrator, store. */
	stop(): Promise<void>;
}

export interface GatewayOptions {
	env?: Record<string, string>;
	clock?: ClockUs;
	logger?: Logger;
	/** One request in this many has its stages timed (the runtime's default: 64). */
	stageSampleEvery?: number;
}

/**
 * The origin of the requests given to `HandledGateway.handle`: the app reads
 * only the path, the query and the headers, never the host.
 */
export const GATEWAY_ORIGIN = "http://gateway.test";

/** A request to `path` (with its query) on a `HandledGateway`. */
export function gatewayRequest(path: string, init?: RequestInit): Request {
	return new Request(`${GATEWAY_ORIGIN}${path}`, init);
}

/** The answer of gateway `g` to a request to `path` (with its query), asked of its app directly. */
export function send(
	g: Pick<HandledGateway, "handle">,
	path: string,
	init?: RequestInit,
): Promise<Response> {
	return g.handle(gatewayRequest(path, init));
}

async function buildFromYaml(yaml: string, options: GatewayOptions) {
	const config = parseConfig(yaml, options.env ?? {}, "test");
	const gateway = await buildGateway(config, {
		logger: options.logger ?? new Logger("silent"),
		...(options.clock === undefined ? {} : { clock: options.clock }),
		...(options.stageSampleEvery === undefined
			? {}
			: { stageSampleEvery: options.stageSampleEvery }),
	});
	return { config, gateway };
}

/** Everything `buildGateway` started, stopped; the server is the caller's. */
async function release(gateway: Runtime): Promise<void> {
	for (const pool of gateway.pools.values()) pool.stopHealthChecks();
	gateway.deps.watcher.stop();
	await gateway.deps.calibrator.stop().catch(() => {});
	await gateway.deps.limiter.store.close();
}

/** Starts a gateway from YAML text on a free loopback port. */
export async function startGateway(
	yaml: string,
	options: GatewayOptions = {},
): Promise<RunningGateway> {
	const { config, gateway } = await buildFromYaml(yaml, options);
	const app = createApp(gateway).listen(serveOptions(config, { hostname: "127.0.0.1", port: 0 }));
	const port = app.server?.port;
	if (port === undefined) throw new Error("gateway did not start");
	return {
		url: `http://127.0.0.1:${port}`,
		gateway,
		stop: async () => {
			await app.stop(true);
			await release(gateway);
		},
	};
}

/**
 * Builds a gateway from YAML text exactly as `startGateway` does, without
 * listening: requests go straight to the app's `handle`. For route tests that
 * need no socket on the gateway's side (the upstreams still listen on theirs).
 */
export async function handleGateway(
	yaml: string,
	options: GatewayOptions = {},
): Promise<HandledGateway> {
	const { gateway } = await buildFromYaml(yaml, options);
	const app = createApp(gateway);
	return {
		handle: (request) => app.handle(request),
		gateway,
		stop: () => release(gateway),
	};
}

/** A one-model configuration pointing at `upstream`. */
export function oneModelConfig(
	upstream: string,
	limits: Record<string, number | string> = {},
	extra = "",
): string {
	const lines = Object.entries({
		"max-tokens-per-minute": 10000,
		"max-tokens-per-day": 100000,
		"max-concurrent-requests": 50,
		"default-max-tokens": 64,
		...limits,
	})
		.map(([k, v]) => `        ${k}: ${v}`)
		.join("\n");
	return `server:
  max-body-bytes: 65536
token:
  rate-limit:
    models:
      llama2-7b:
${lines}
vllm:
  services:
    llama2-7b: ${upstream}
logging:
  level: silent
${extra}`;
}
