/**
 * A fake vLLM OpenAI-compatible server for the demo, tests and benchmarks.
 *
 * It speaks vLLM's wire format: `/v1/chat/completions` and `/v1/completions`
 * (JSON or SSE `data: {json}\n\n` events ending with `data: [DONE]`), the usage
 * event with `"choices": []` when `stream_options.include_usage` is set, usage on
 * every event with `continuous_usage_stats`, `/v1/models`, `/health`,
 * `/tokenize`, `/metrics`, and errors in vLLM's `{"error":{...}}` shape.
 *
 * Prompt tokens are counted its own way (one per whitespace-separated word plus
 * 4 per chat message), deliberately not the gateway's tiktoken estimate, so tests
 * see settlement follow the server's numbers.
 */

export type MockMode =
	/** Answer normally. */
	| "ok"
	/** Answer every completion with `errorStatus` in vLLM's error shape. */
	| "error"
	/** Accept the request and never answer. */
	| "hang"
	/** Stream normally but never send a usage event (an upstream that ignores include_usage). */
	| "no-usage"
	/** Stream `failAfterTokens` tokens, then cut the connection. */
	| "cut";

export interface MockBehavior {
	mode: MockMode;
	/** Tokens generated per choice when max_tokens allows. */
	outputTokens: number;
	/** Delay before each streamed token. */
	tokenDelayMs: number;
	/** Delay before the response starts. */
	firstTokenDelayMs: number;
	/** For streams: delay after the headers, before the first event (vLLM's prefill). */
	prefillDelayMs: number;
	errorStatus: number;
	failAfterTokens: number;
	/** What /metrics reports as vllm:num_requests_waiting (the server's queue). */
	waiting: number;
	/** What /metrics reports as vllm:gpu_cache_usage_perc (0-1). */
	kvCacheUsage: number;
}

export interface MockRequestRecord {
	readonly path: string;
	readonly body: Record<string, unknown>;
	readonly headers: Record<string, string>;
}

export interface MockVllm {
	readonly url: string;
	readonly port: number;
	readonly behavior: MockBehavior;
	/** Completion requests received, newest last (bounded). */
	readonly requests: MockRequestRecord[];
	/** Streams that ended because the client went away. */
	readonly aborted: { count: number };
	/** Requests being generated right now. */
	running(): number;
	/**
	 * The most requests it has held at once, waiting for their first token or
	 * generating (since start, or since `resetPeak`).
	 */
	peakRunning(): number;
	resetPeak(): void;
	/** Usage it reported (or would have reported), summed over finished requests. */
	readonly usageTotals: { prompt: number; completion: number };
	/**
	 * The same per request, keyed by the `x-request-id` it came with (only with
	 * `perRequestUsage`); `cancelled` when the caller went away mid-stream.
	 */
	readonly usageById: Map<string, MockUsage>;
	stop(): Promise<void>;
}

export interface MockUsage {
	prompt: number;
	completion: number;
	cancelled: boolean;
}

export interface MockOptions {
	port?: number;
	hostname?: string;
	models?: string[];
	behavior?: Partial<MockBehavior>;
	/** Keep a record of each request (tests); off for benchmarks. */
	record?: boolean;
	/** Keep each request's usage by its `x-request-id` (see `usageById`). */
	perRequestUsage?: boolean;
	/** Count prompts this way instead of the mock's own word count (a model whose tokenizer the gateway knows). */
	promptTokens?: (body: Record<string, unknown>) => number;
}

const WORDS = ["Hello", " there", ",", " this", " is", " a", " mock", " model", " reply", "."];

function countWords(text: string): number {
	const m = text.match(/\S+/g);
	return m === null ? 0 : m.length;
}

function contentText(content: unknown): string {
	if (typeof content === "string") return content;
	if (Array.isArray(content)) {
		return content
			.map((p) =>
				p !== null && typeof p === "object" && "text" in p && typeof p.text === "string"
					? p.text
					: "",
			)
			.join(" ");
	}
	return "";
}

/** The mock's own prompt count (stands in for the model's tokenizer). */
export function mockPromptTokens(body: Record<string, unknown>): number {
	if (Array.isArray(body.messages)) {
		let n = 0;
		for (const m of body.messages) {
			if (m !== null && typeof m === "object") {
				n += 4 + countWords(contentText((m as Record<string, unknown>).content));
			}
		}
		return n;
	}
	const prompt = body.prompt;
	if (typeof prompt === "string") return countWords(prompt);
	if (Array.isArray(prompt)) {
		let n = 0;
		for (const p of prompt) {
			if (typeof p === "string") n += countWords(p);
			else if (typeof p === "number") n += 1;
			else if (Array.isArray(p)) n += p.length;
		}
		return n;
	}
	return 0;
}

function vllmError(status: number, message: string, type = "BadRequestError"): Response {
	return Response.json({ error: { message, type, param: null, code: status } }, { status });
}

const sleep = (ms: number) => (ms > 0 ? Bun.sleep(ms) : Promise.resolve());

export function startMockVllm(options: MockOptions = {}): MockVllm {
	const behavior: MockBehavior = {
		mode: "ok",
		outputTokens: 20,
		tokenDelayMs: 0,
		firstTokenDelayMs: 0,
		prefillDelayMs: 0,
		errorStatus: 500,
		failAfterTokens: 3,
		waiting: 0,
		kvCacheUsage: 0,
		...options.behavior,
	};
	const models = options.models ?? ["mock-model"];
	const requests: MockRequestRecord[] = [];
	const aborted = { count: 0 };
	const usageTotals = { prompt: 0, completion: 0 };
	const usageById = new Map<string, MockUsage>();
	const account = (req: Request, prompt: number, completion: number, cancelled: boolean) => {
		usageTotals.prompt += prompt;
		usageTotals.completion += completion;
		const id = req.headers.get("x-request-id");
		if (options.perRequestUsage === true && id !== null)
			usageById.set(id, { prompt, completion, cancelled });
	};
	let running = 0;
	let peak = 0;
	let delaying = 0;
	let seq = 0;
	const encoder = new TextEncoder();

	const complete = async (req: Request, chat: boolean): Promise<Response> => {
		let body: Record<string, unknown>;
		try {
			const parsed: unknown = await req.json();
			if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed))
				throw new Error("not an object");
			body = parsed as Record<string, unknown>;
		} catch {
			return vllmError(400, "Invalid JSON body");
		}
		if (options.record !== false) {
			requests.push({
				path: new URL(req.url).pathname,
				body,
				headers: Object.fromEntries(req.headers),
			});
			if (requests.length > 10_000) requests.shift();
		}
		const model = typeof body.model === "string" ? body.model : "";
		if (!models.includes(model)) {
			return vllmError(404, `The model \`${model}\` does not exist.`, "NotFoundError");
		}
		if (chat && !Array.isArray(body.messages)) return vllmError(400, "messages is required");
		// Tests may pick a fault per request with a `mock_fault` field (passed through by the gateway).
		const fault = typeof body.mock_fault === "string" ? (body.mock_fault as MockMode) : undefined;
		const mode: MockMode = fault ?? behavior.mode;
		if (mode === "error") {
			return vllmError(
				behavior.errorStatus,
				"mock failure",
				behavior.errorStatus >= 500 ? "InternalServerError" : "BadRequestError",
			);
		}
		if (mode === "hang") {
			await new Promise<void>((resolve) => req.signal.addEventListener("abort", () => resolve()));
			return new Response(null, { status: 499 });
		}
		const maxTokens =
			typeof body.max_completion_tokens === "number"
				? body.max_completion_tokens
				: typeof body.max_tokens === "number"
					? body.max_tokens
					: Number.POSITIVE_INFINITY;
		const perChoice = Math.max(0, Math.min(behavior.outputTokens, maxTokens));
		const choices = typeof body.n === "number" && body.n > 0 ? body.n : 1;
		const promptTokens = (options.promptTokens ?? mockPromptTokens)(body);
		const finish = perChoice < behavior.outputTokens ? "length" : "stop";
		const id = `${chat ? "chatcmpl" : "cmpl"}-mock${++seq}`;
		const created = Math.floor(Date.now() / 1000);
		const word = (i: number) => WORDS[i % WORDS.length] ?? ".";
		// Waiting for its first token counts as held by the server (the peak), not as running.
		delaying++;
		if (running + delaying > peak) peak = running + delaying;
		await sleep(behavior.firstTokenDelayMs);
		delaying--;

		if (body.stream !== true) {
			const text = Array.from({ length: perChoice }, (_, i) => word(i)).join("");
			const usage = {
				prompt_tokens: promptTokens,
				total_tokens: promptTokens + perChoice * choices,
				completion_tokens: perChoice * choices,
			};
			account(req, promptTokens, perChoice * choices, false);
			const choiceList = Array.from({ length: choices }, (_, index) =>
				chat
					? {
							index,
							message: { role: "assistant", content: text, tool_calls: [] },
							logprobs: null,
							finish_reason: finish,
							stop_reason: null,
						}
					: { index, text, logprobs: null, finish_reason: finish, stop_reason: null },
			);
			return Response.json({
				id,
				object: chat ? "chat.completion" : "text_completion",
				created,
				model,
				choices: choiceList,
				usage,
			});
		}

		const so = body.stream_options;
		const includeUsage =
			so !== null &&
			typeof so === "object" &&
			(so as Record<string, unknown>).include_usage === true &&
			mode !== "no-usage";
		const continuous =
			includeUsage && (so as Record<string, unknown>).continuous_usage_stats === true;
		const object = chat ? "chat.completion.chunk" : "text_completion";
		let generated = 0;
		let closed = false;
		running++;
		if (running + delaying > peak) peak = running + delaying;
		const done = (cancelled = false) => {
			if (!closed) {
				closed = true;
				running--;
				account(req, promptTokens, generated, cancelled);
			}
		};
		const event = (payload: unknown) => encoder.encode(`data: ${JSON.stringify(payload)}\n\n`);
		const usageNow = () => ({
			prompt_tokens: promptTokens,
			total_tokens: promptTokens + generated,
			completion_tokens: generated,
		});
		const stream = new ReadableStream<Uint8Array>({
			async start(controller) {
				try {
					await sleep(behavior.prefillDelayMs);
					if (closed) return;
					if (chat) {
						for (let index = 0; index < choices; index++) {
							const first: Record<string, unknown> = {
								id,
								object,
								created,
								model,
								choices: [
									{
										index,
										delta: { role: "assistant", content: "" },
										logprobs: null,
										finish_reason: null,
									},
								],
							};
							if (continuous) first.usage = usageNow();
							controller.enqueue(event(first));
						}
					}
					for (let i = 0; i < perChoice; i++) {
						await sleep(behavior.tokenDelayMs);
						if (closed) return;
						for (let index = 0; index < choices; index++) {
							generated++;
							const last = i === perChoice - 1;
							const choice = chat
								? {
										index,
										delta: { content: word(i) },
										logprobs: null,
										finish_reason: last ? finish : null,
										...(last ? { stop_reason: null } : {}),
									}
								: {
										index,
										text: word(i),
										logprobs: null,
										finish_reason: last ? finish : null,
										stop_reason: null,
									};
							const chunk: Record<string, unknown> = {
								id,
								object,
								created,
								model,
								choices: [choice],
							};
							if (continuous) chunk.usage = usageNow();
							controller.enqueue(event(chunk));
						}
						if (mode === "cut" && i + 1 >= behavior.failAfterTokens) {
							// Let what was generated go out first: erroring drops whatever is still queued.
							await sleep(30);
							done();
							controller.error(new Error("mock connection cut"));
							return;
						}
					}
					if (includeUsage)
						controller.enqueue(
							event({ id, object, created, model, choices: [], usage: usageNow() }),
						);
					controller.enqueue(encoder.encode("data: [DONE]\n\n"));
					done();
					controller.close();
				} catch {
					// The client went away while we were writing.
					done(true);
				}
			},
			cancel() {
				aborted.count++;
				done(true);
			},
		});
		return new Response(stream, {
			headers: { "content-type": "text/event-stream; charset=utf-8" },
		});
	};

	const server = Bun.serve({
		port: options.port ?? 0,
		hostname: options.hostname ?? "127.0.0.1",
		idleTimeout: 0,
		// A stream cut on purpose (mode "cut") resets the connection, as a dying vLLM
		// would, without the error being printed: expected failures stay out of test output.
		development: false,
		async fetch(req) {
			const path = new URL(req.url).pathname;
			if (req.method === "POST" && path === "/v1/chat/completions") return complete(req, true);
			if (req.method === "POST" && path === "/v1/completions") return complete(req, false);
			if (req.method === "GET" && path === "/health") return new Response(null, { status: 200 });
			if (req.method === "GET" && path === "/v1/models") {
				return Response.json({
					object: "list",
					data: models.map((id) => ({
						id,
						object: "model",
						created: 0,
						owned_by: "vllm",
						root: id,
						parent: null,
						max_model_len: 4096,
					})),
				});
			}
			if (req.method === "POST" && path === "/tokenize") {
				const body = (await req.json().catch(() => ({}))) as Record<string, unknown>;
				const count = (options.promptTokens ?? mockPromptTokens)(body);
				return Response.json({
					count,
					max_model_len: 4096,
					tokens: Array.from({ length: count }, (_, i) => i),
				});
			}
			if (req.method === "GET" && path === "/metrics") {
				return new Response(
					models
						.map(
							(m) =>
								`# HELP vllm:num_requests_running Number of requests currently running on GPU.\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="${m}"} ${running}\nvllm:num_requests_waiting{model_name="${m}"} ${behavior.waiting}\nvllm:gpu_cache_usage_perc{model_name="${m}"} ${behavior.kvCacheUsage}\n`,
						)
						.join(""),
					{ headers: { "content-type": "text/plain; version=0.0.4" } },
				);
			}
			return vllmError(404, `Not Found: ${path}`, "NotFoundError");
		},
	});
	const port = server.port ?? 0;
	return {
		url: `http://127.0.0.1:${port}`,
		port,
		behavior,
		requests,
		aborted,
		usageTotals,
		usageById,
		running: () => running,
		peakRunning: () => peak,
		resetPeak: () => {
			peak = running + delaying;
		},
		stop: async () => {
			await server.stop(true);
		},
	};
}

if (import.meta.main) {
	const port = Number(process.env.MOCK_VLLM_PORT ?? 8000);
	const models = (process.env.MOCK_VLLM_MODELS ?? "llama2-7b,gpt-3.5-turbo").split(",");
	// 0.0.0.0 in a container, so other containers (the gateway) reach it.
	const hostname = process.env.MOCK_VLLM_HOST ?? "127.0.0.1";
	let mock: MockVllm;
	try {
		mock = startMockVllm({
			port,
			hostname,
			models,
			record: false,
			behavior: {
				outputTokens: Number(process.env.MOCK_VLLM_OUTPUT_TOKENS ?? 20),
				tokenDelayMs: Number(process.env.MOCK_VLLM_TOKEN_DELAY_MS ?? 0),
			},
		});
	} catch (err) {
		const code = err !== null && typeof err === "object" && "code" in err ? String(err.code) : "";
		process.stderr.write(
			code === "EADDRINUSE"
				? `mock vLLM: port ${port} on ${hostname} is in use; set MOCK_VLLM_PORT to a free port\n`
				: `mock vLLM: cannot listen on ${hostname}:${port} (MOCK_VLLM_PORT, MOCK_VLLM_HOST): ${err instanceof Error ? err.message : String(err)}\n`,
		);
		process.exit(2);
	}
	process.stdout.write(`mock vLLM listening on ${mock.url} serving ${models.join(", ")}\n`);
}
