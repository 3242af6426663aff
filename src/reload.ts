import { watch } from "node:fs";
import { dirname } from "node:path";
import { ConfigError, type Env, loadConfigFile } from "./config/loader.ts";
import type { Runtime } from "./runtime.ts";

/**
 * Hot reload of the configuration file, on SIGHUP or when the file changes.
 * The new file is validated first: a bad edit keeps the configuration in force
 * and says why in the log.
 */
export function watchConfig(
	runtime: Runtime,
	path: string,
	env: Env,
): { reload: () => Promise<boolean>; stop: () => void } {
	const { logger } = runtime.deps;
	let running: Promise<boolean> | undefined;
	let lastText: string | undefined;
	const reload = async (onlyIfChanged = false): Promise<boolean> => {
		try {
			const text = await Bun.file(path)
				.text()
				.catch(() => undefined);
			// Directory events also come for other files: reload only what really changed.
			if (onlyIfChanged && text !== undefined && text === lastText) return true;
			lastText = text;
			const next = await loadConfigFile(path, env);
			const restartOnly = await runtime.reload(next);
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
	const schedule = (onlyIfChanged: boolean) => {
		if (timer !== undefined) clearTimeout(timer);
		timer = setTimeout(() => {
			running = (running ?? Promise.resolve(true)).then(() => reload(onlyIfChanged));
		}, 200);
	};
	const onHup = () => schedule(false);
	process.on("SIGHUP", onHup);
	// Watch the directory, not the file: editors save by writing a new file and renaming it,
	// and Kubernetes swaps a ConfigMap's symlink; a watch on the old file would go quiet.
	let watcher: ReturnType<typeof watch> | undefined;
	try {
		watcher = watch(dirname(path), () => schedule(true));
	} catch {
		watcher = undefined; // SIGHUP still works
	}
	void Bun.file(path)
		.text()
		.then((text) => {
			lastText ??= text;
		})
		.catch(() => {});
	return {
		reload: () => reload(false),
		stop: () => {
			process.off("SIGHUP", onHup);
			watcher?.close();
			if (timer !== undefined) clearTimeout(timer);
		},
	};
}
