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

/** Starts a gateway from YAML text on a free loopback port. */
export async function startGateway(
	yaml: string,
	options: { env?: Record<string, string>; clock?: ClockUs; logger?: Logger } = {},
): Promise<RunningGateway> {
	const config = parseConfig(yaml, options.env ?? {}, "test");
	const gateway = await buildGateway(config, {
		logger: options.logger ?? new Logger("silent"),
		...(options.clock === undefined ? {} : { clock: options.clock }),
	});
	const app = createApp(gateway).listen(serveOptions(config, { hostname: "127.0.0.1", port: 0 }));
	const port = app.server?.port;
	if (port === undefined) throw new Error("gateway did not start");
	return {
		url: `http://127.0.0.1:${port}`,
		gateway,
		stop: async () => {
			await app.stop(true);
			for (const pool of gateway.pools.values()) pool.stopHealthChecks();
			gateway.deps.watcher.stop();
			await gateway.deps.calibrator.stop().catch(() => {});
			await gateway.deps.limiter.store.close();
		},
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
