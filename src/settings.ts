/**
 * Settings every gateway replica must see alike (issued API keys, limit
 * overrides): small maps of JSON strings kept in the limit store, and a version
 * number that changes with every write. Replicas poll the version and reload
 * when it moves, so a change is in force everywhere within a poll interval.
 */

export type SettingsMap = "api-keys" | "overrides";

/**
 * Settings every replica must see: a few small maps of JSON strings and one
 * version number that changes with every write, which replicas poll to know
 * when to reload.
 */
export interface SettingsStore {
	load(map: SettingsMap): Promise<Map<string, string>>;
	put(map: SettingsMap, field: string, value: string): Promise<void>;
	/** True when the field existed. */
	remove(map: SettingsMap, field: string): Promise<boolean>;
	version(): Promise<number>;
}

/** Settings of one process (memory store). */
export class MemorySettings implements SettingsStore {
	private readonly maps = new Map<SettingsMap, Map<string, string>>();
	private counter = 0;

	async load(map: SettingsMap): Promise<Map<string, string>> {
		return new Map(this.maps.get(map) ?? []);
	}

	async put(map: SettingsMap, field: string, value: string): Promise<void> {
		const m = this.maps.get(map) ?? new Map<string, string>();
		m.set(field, value);
		this.maps.set(map, m);
		this.counter++;
	}

	async remove(map: SettingsMap, field: string): Promise<boolean> {
		const removed = this.maps.get(map)?.delete(field) ?? false;
		if (removed) this.counter++;
		return removed;
	}

	async version(): Promise<number> {
		return this.counter;
	}
}

/**
 * Polls the settings version and tells subscribers when to reload. One poll per
 * interval for the whole process, however many subscribers.
 */
export class SettingsWatcher {
	private readonly listeners: (() => Promise<void>)[] = [];
	private seen = -1;
	private timer: ReturnType<typeof setInterval> | undefined;

	constructor(
		private readonly settings: SettingsStore,
		private readonly intervalMs = 500,
	) {}

	/** Registers a reload; it runs at once and again after every change. */
	async subscribe(reload: () => Promise<void>): Promise<void> {
		this.listeners.push(reload);
		await reload().catch(() => {});
	}

	start(): void {
		if (this.timer !== undefined) return;
		this.timer = setInterval(() => void this.poll(), this.intervalMs);
		this.timer.unref();
	}

	/** Checks the version now; reloads every subscriber if it moved. */
	async poll(): Promise<void> {
		let version: number;
		try {
			version = await this.settings.version();
		} catch {
			return; // the store is away; keep what we have
		}
		if (version === this.seen) return;
		this.seen = version;
		await Promise.all(this.listeners.map((reload) => reload().catch(() => {})));
	}

	stop(): void {
		if (this.timer !== undefined) clearInterval(this.timer);
		this.timer = undefined;
	}
}
