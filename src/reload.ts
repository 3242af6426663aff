import { watch } from "node:fs";
import { ConfigError, type Env, loadConfigFile } from "./config/loader.ts";
import type { Gateway } from "./gateway.ts";

/**
 * Hot reload of the configuration file, on SIGHUP or when the file changes.
 * The new file is validated first: a bad edit keeps the configuration in force
 * and says why in the log.
 */
export function watchConfig(
	gateway: Gateway,
	path: string,
	env: Env,
): { reload: () => Promise<boolean>; stop: () => void } {
	const { logger } = gateway.deps;
	let running: Promise<boolean> | undefined;
	const reload = async (): Promise<boolean> => {
		try {
			const next = await loadConfigFile(path, env);
			const restartOnly = await gateway.reload(next);
			logger.info("config reloaded", {
				config: path,
				models: [...next.models.keys()],
				...(restartOnly.length === 0 ? {} : { needsRestart: restartOnly }),
			});
			return true;
		} catch (err) {
			logger.error("config reload rejected; the previous configuration stays in force", {
				config: path,
				problems:
					err instanceof ConfigError
						? err.problems
						: [err instanceof Error ? err.message : String(err)],
			});
			return false;
		}
	};
	// Editors write files in several steps: wait for the writes to settle, one reload at a time.
	let timer: ReturnType<typeof setTimeout> | undefined;
	const schedule = () => {
		if (timer !== undefined) clearTimeout(timer);
		timer = setTimeout(() => {
			running = (running ?? Promise.resolve(true)).then(reload);
		}, 200);
	};
	const onHup = () => schedule();
	process.on("SIGHUP", onHup);
	let watcher: ReturnType<typeof watch> | undefined;
	try {
		watcher = watch(path, () => schedule());
	} catch {
		watcher = undefined; // SIGHUP still works
	}
	return {
		reload,
		stop: () => {
			process.off("SIGHUP", onHup);
			watcher?.close();
			if (timer !== undefined) clearTimeout(timer);
		},
	};
}
