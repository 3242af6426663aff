import { createApp, serveOptions } from "./app.ts";
import { buildGateway } from "./bootstrap.ts";
import { ConfigError, configPathFrom, loadConfigFile } from "./config/loader.ts";
import type { GatewayConfig } from "./config/schema.ts";
import { watchConfig } from "./reload.ts";
import { VERSION } from "./version.ts";

const USAGE = `token-rate-limiter ${VERSION}: an OpenAI-compatible gateway that spends each
caller's token budget per model in front of vLLM.

Usage: token-rate-limiter [--config <file>]      (or: bun src/main.ts [--config <file>])

Options:
  --config <file>         the configuration file (else TRL_CONFIG, else config/dev.yaml)
  --port <n>              the port to listen on, over everything else
                          (also --server.port=<n>, as Spring takes it)
  --help                  this text
  --version               the version

Environment:
  TRL_CONFIG              the configuration file, when --config is not given
  SERVER_PORT, PORT       the port to listen on, over server.port (SERVER_PORT first, as in Spring)
  REDIS_HOST, REDIS_PORT  Redis's address, over spring.data.redis.host and .port (as in the seed)
  \${NAME} and \${NAME:default} placeholders in the file are read from the environment.

The configuration reference: docs/operations.md.
`;

type Command =
	| { readonly kind: "run"; readonly port: string | undefined }
	| { readonly kind: "help" }
	| { readonly kind: "version" }
	| { readonly kind: "error"; readonly message: string };

/** What the command line asks for: run (with a port given on it), print, or an error. */
function commandOf(argv: readonly string[]): Command {
	let port: string | undefined;
	for (let i = 0; i < argv.length; i++) {
		const arg = argv[i] ?? "";
		if (arg === "--help" || arg === "-h") return { kind: "help" };
		if (arg === "--version" || arg === "-v") return { kind: "version" };
		if (arg === "--config" || arg === "--port") {
			const value = argv[i + 1];
			if (value === undefined) return { kind: "error", message: `${arg} needs a value` };
			if (arg === "--port") port = value;
			i++;
			continue;
		}
		if (arg.startsWith("--config=")) continue;
		const inline = /^--(?:port|server\.port)=(.*)$/.exec(arg);
		if (inline !== null) {
			port = inline[1];
			continue;
		}
		return { kind: "error", message: `unknown argument ${JSON.stringify(arg)}` };
	}
	return { kind: "run", port };
}

/** Boots the gateway: load and validate the configuration, build, listen, drain on SIGTERM. */
async function main(): Promise<void> {
	const command = commandOf(Bun.argv.slice(2));
	if (command.kind === "help") {
		process.stdout.write(USAGE);
		return;
	}
	if (command.kind === "version") {
		process.stdout.write(`token-rate-limiter ${VERSION}\n`);
		return;
	}
	if (command.kind === "error") {
		process.stderr.write(`${command.message}; token-rate-limiter --help lists the options\n`);
		process.exit(2);
	}
	if (command.port !== undefined && !/^\d+$/.test(command.port.trim())) {
		process.stderr.write(
			`--port: expected a port number (0-65535), got ${JSON.stringify(command.port)}\n`,
		);
		process.exit(2);
	}
	// A port on the command line wins, as Spring's --server.port does; it is read as SERVER_PORT is.
	const env =
		command.port === undefined ? process.env : { ...process.env, SERVER_PORT: command.port };
	const portFrom =
		command.port !== undefined
			? "--port"
			: process.env.SERVER_PORT !== undefined
				? "SERVER_PORT"
				: process.env.PORT !== undefined
					? "PORT"
					: undefined;
	const path = configPathFrom(Bun.argv.slice(2), process.env);
	let config: GatewayConfig;
	try {
		config = await loadConfigFile(path, env);
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
	// Where the address came from, in the words the operator used to set it.
	const listenFrom =
		portFrom !== undefined
			? `the port from ${portFrom}`
			: config.server.portFrom === "server.port"
				? `server.host / server.port in ${path}`
				: `the default port ${config.server.port}, as ${path} sets no server.port; set server.port, SERVER_PORT or --port`;
	let app: ReturnType<ReturnType<typeof createApp>["listen"]>;
	try {
		app = createApp(gateway, lifecycle).listen(serveOptions(config));
	} catch (err) {
		const code = err !== null && typeof err === "object" && "code" in err ? String(err.code) : "";
		const where = `${config.server.host}:${config.server.port}`;
		process.stderr.write(
			code === "EADDRINUSE"
				? `cannot listen on ${where}: the address is in use (${listenFrom})\n`
				: `cannot listen on ${where}: ${err instanceof Error ? err.message : String(err)}\n`,
		);
		process.exit(2);
	}
	const { logger } = gateway.deps;
	logger.info("gateway listening", {
		url: `http://${config.server.host}:${app.server?.port ?? config.server.port}`,
		config: path,
		store: config.store,
		storeFrom: config.storeReason,
		models: [...config.models.keys()],
	});
	// Reloads read the same environment, --port included.
	const reloader = watchConfig(gateway, path, env);
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
