/** The baseline: the fewest lines of Bun that proxy a request (fetch and return). */
const upstream = process.env.UPSTREAM ?? "http://127.0.0.1:8000";
Bun.serve({
	port: Number(process.env.PORT ?? 8081),
	hostname: "127.0.0.1",
	async fetch(req) {
		const url = new URL(req.url);
		return fetch(`${upstream}${url.pathname}`, {
			method: req.method,
			headers: req.headers,
			body: req.body,
		});
	},
});
