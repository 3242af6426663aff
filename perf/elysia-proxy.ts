/**
 * The floor: the least an Elysia gateway must do for a chat completion, with no
 * limits, counting, logging or metrics. The body is read as text and parsed
 * (the gateway must look at it), serialised again for the upstream; a plain
 * answer is read, parsed (usage is in it) and serialised into a new Response
 * with the headers a gateway adds; a stream (`"stream": true`) is relayed as is.
 *
 *   PORT=8082 UPSTREAM=http://127.0.0.1:8000 bun perf/elysia-proxy.ts
 */
import { Elysia } from "elysia";

const upstream = process.env.UPSTREAM ?? "http://127.0.0.1:8000";
const LIMIT = 1_000_000_000;
let spent = 0;

function isStream(body: unknown): boolean {
	return typeof body === "object" && body !== null && "stream" in body && body.stream === true;
}

new Elysia()
	.get("/health", () => new Response("ok"))
	.post(
		"/v1/chat/completions",
		async ({ request }) => {
			const body: unknown = JSON.parse(await request.text());
			const res = await fetch(`${upstream}/v1/chat/completions`, {
				method: "POST",
				headers: { "content-type": "application/json" },
				body: JSON.stringify(body),
			});
			spent += 16;
			const headers = {
				"x-request-id": crypto.randomUUID(),
				"x-ratelimit-remaining-tokens": String(LIMIT - spent),
			};
			if (isStream(body)) {
				return new Response(res.body, {
					status: res.status,
					headers: { ...headers, "content-type": "text/event-stream" },
				});
			}
			const parsed: unknown = JSON.parse(await res.text());
			return new Response(JSON.stringify(parsed), {
				status: res.status,
				headers: { ...headers, "content-type": "application/json" },
			});
		},
		{ parse: "none" },
	)
	.listen({ port: Number(process.env.PORT ?? 8082), hostname: "127.0.0.1" });
