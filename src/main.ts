import { createApp, serveOptions } from "./app.ts";
import { buildGateway } from "./bootstrap.ts";
import { ConfigError, configPathFrom, loadConfigFile } from "./config/loader.ts";
import type { GatewayConfig } from "./config/schema.ts";
import { watchConfig } from "./reload.ts";

/** Boots the gateway: load and validate the configuration, build, listen, drain on SIGTERM. */
async function main(): Promise<void> {
	const path = configPathFrom(Bun.argv.slice(2), process.env);
	let config: GatewayConfig;
	try {
		config = await loadConfigFile(path, process.env);
	} catch (err) {
		if (err instanceof ConfigError) {
			process.stderr.write(`${err.message}\n`);
			process.exit(2);
		}
		throw err;
	}
	let gateway: Awaited<ReturnType<typeof buildGateway>>;
	try {
		gateway = await buildGateway(config);
	} catch (err) {
		// Tokenizer files are read here: a bad one is a configuration problem like any other.
		if (err instanceof ConfigError) {
			process.stderr.write(`${new ConfigError(path, err.problems).message}\n`);
			process.exit(2);
		}
		throw err;
	}
	const lifecycle = { accepting: true };
	let app: ReturnType<ReturnType<typeof createApp>["listen"]>;
	try {
		app = createApp(gateway, lifecycle).listen(serveOptions(config));
	} catch (err) {
		const code = err !== null && typeof err === "object" && "code" in err ? String(err.code) : "";
		const where = `${config.server.host}:${config.server.port}`;
		process.stderr.write(
			code === "EADDRINUSE"
				? `cannot listen on ${where}: the address is in use (server.host / server.port in ${path})\n`
				: `cannot listen on ${where}: ${err instanceof Error ? err.message : String(err)}\n`,
		);
		process.exit(2);
	}
	const { logger } = gateway.deps;
	logger.info("gateway listening", {
		url: `http://${config.server.host}:${app.server?.port ?? config.server.port}`,
		config: path,
		store: config.store,
		models: [...config.models.keys()],
	});
	const reloader = watchConfig(gateway, path, process.env);
	let stopping = false;
	const shutdown = async (signal: string) => {
		if (stopping) return;
		stopping = true;
		reloader.stop();
		logger.info("shutting down", { signal, drainMs: gateway.config.server.drainMs });
		// Readiness turns false at once, so Kubernetes stops sending traffic here.
		lifecycle.accepting = false;
		await gateway.drain(gateway.config.server.drainMs);
		await app.stop(true);
		gateway.deps.watcher.stop();
		await gateway.deps.calibrator.stop().catch(() => {});
		for (const pool of gateway.pools.values()) pool.stopHealthChecks();
		await gateway.deps.limiter.store.close();
		logger.info("stopped", { signal });
		// The log is written in batches: an exit with lines still queued for a slow pipe would lose
		// them. A reader that takes nothing for 5 s does not hold up the exit.
		await Promise.race([logger.flush(), Bun.sleep(5000)]);
		process.exit(0);
	};
	process.on("SIGTERM", () => void shutdown("SIGTERM"));
	process.on("SIGINT", () => void shutdown("SIGINT"));
}

await main();
