import type { SseUsageReader } from "./sse.ts";

/** How a relayed stream ended. */
export type StreamEnd = "completed" | "client_cancelled" | "upstream_failed";

/**
 * Relays an upstream SSE body to the client chunk by chunk, as it arrives,
 * through the usage reader. `onEnd` runs exactly once: when the upstream
 * finishes, fails, or the client goes away (then the upstream is aborted).
 */
export function relaySse(
	upstream: ReadableStream<Uint8Array>,
	reader: SseUsageReader,
	abortUpstream: () => void,
	onEnd: (end: StreamEnd) => void,
	describeFailure: (err: unknown) => string | { message: string; code: string } = (err) =>
		`The model server stream failed: ${err instanceof Error ? err.message : String(err)}`,
	onChunk: () => void = () => {},
): ReadableStream<Uint8Array> {
	const source = upstream.getReader();
	let ended = false;
	const finish = (end: StreamEnd) => {
		if (ended) return;
		ended = true;
		onEnd(end);
	};
	return new ReadableStream<Uint8Array>(
		{
			async pull(controller) {
				try {
					for (;;) {
						const { done, value } = await source.read();
						if (done) {
							for (const piece of reader.end()) controller.enqueue(piece);
							controller.close();
							finish("completed");
							return;
						}
						onChunk();
						const out = reader.feed(value);
						if (out.length > 0) {
							for (const piece of out) controller.enqueue(piece);
							return;
						}
					}
				} catch (err) {
					if (ended) return;
					const described = describeFailure(err);
					const { message, code } =
						typeof described === "string"
							? { message: described, code: "upstream_stream_failed" }
							: described;
					const event = `data: ${JSON.stringify({
						error: { message, type: "server_error", param: null, code },
					})}\n\n`;
					try {
						controller.enqueue(new TextEncoder().encode(event));
						controller.close();
					} catch {
						// The client is already gone.
					}
					finish("upstream_failed");
				}
			},
			cancel() {
				abortUpstream();
				source.cancel().catch(() => {});
				finish("client_cancelled");
			},
		},
		{ highWaterMark: 0 },
	);
}
