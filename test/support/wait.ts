/** Polls `check` every 50 ms until it holds or `ms` pass; true when it held. */
export async function within(ms: number, check: () => Promise<boolean>): Promise<boolean> {
	const deadline = Date.now() + ms;
	while (Date.now() < deadline) {
		if (await check()) return true;
		await Bun.sleep(50);
	}
	return check();
}
