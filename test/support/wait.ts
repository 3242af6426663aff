/** Polls `check` every 50 ms until it holds or `ms` pass; true when it held. */
export function within(ms: number, check: () => Promise<boolean>): Promise<boolean> {
	return until(check, { what: "", timeoutMs: ms, intervalMs: 50 }).then(
		() => true,
		() => false,
	);
}

/** What a test waits for, and how long it may take. */
export interface WaitOptions {
	/** What is awaited, for the error when it does not come: "the first request to be admitted". */
	readonly what: string;
	/** How long it may take; default 5000 ms (generous: the machine may be loaded). */
	readonly timeoutMs?: number;
	/** Pause between two checks; default 10 ms. */
	readonly intervalMs?: number;
}

/**
 * Polls `check` until it holds; throws an error naming what it waited for when
 * `timeoutMs` pass first. For waiting on an event a test cannot subscribe to
 * (a request admitted, a probe run), instead of sleeping and assuming it happened.
 */
export async function until(
	check: () => boolean | Promise<boolean>,
	options: WaitOptions,
): Promise<void> {
	const timeoutMs = options.timeoutMs ?? 5000;
	const deadline = performance.now() + timeoutMs;
	for (;;) {
		if (await check()) return;
		if (performance.now() >= deadline) {
			throw new Error(`timed out after ${timeoutMs} ms waiting for ${options.what}`);
		}
		await Bun.sleep(options.intervalMs ?? 10);
	}
}

/** `promise`'s value; an error naming what it waited for when it does not settle within `timeoutMs`. */
export async function resolvesWithin<T>(
	promise: Promise<T>,
	options: Omit<WaitOptions, "intervalMs">,
): Promise<T> {
	const timeoutMs = options.timeoutMs ?? 5000;
	let timer: ReturnType<typeof setTimeout> | undefined;
	const timeout = new Promise<never>((_, reject) => {
		timer = setTimeout(
			() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${options.what}`)),
			timeoutMs,
		);
	});
	try {
		return await Promise.race([promise, timeout]);
	} finally {
		clearTimeout(timer);
	}
}

/**
 * Waits until every request `gateway` admitted has been settled (reservation
 * finished in the store, slot released, log line written); throws when that
 * takes longer than `timeoutMs` (a request that is never settled is a leak).
 */
export function allSettled(gateway: { settled(): Promise<void> }, timeoutMs = 5000): Promise<void> {
	return resolvesWithin(gateway.settled(), {
		what: "every admitted request to be settled",
		timeoutMs,
	});
}

/** Waits until `gateway` has admitted at least `n` requests it has not yet settled. */
export function admitted(
	gateway: { readonly inFlight: number },
	n: number,
	timeoutMs = 5000,
): Promise<void> {
	return until(() => gateway.inFlight >= n, {
		what: `${n} request${n === 1 ? "" : "s"} to be admitted (in flight)`,
		timeoutMs,
	});
}
