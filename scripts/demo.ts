/**
 * `bun run demo`: the gateway (memory store) in front of a mock vLLM, with
 * ready-to-paste examples, and a budget spent until the gateway answers 429.
 *
 * Options: DEMO_PORT (default 8080), MOCK_VLLM_PORT (default 8000; another free
 * port is taken when busy), `--once` to exit after the demonstration (exit 1 if
 * no request was refused with 429). Colours only on a terminal, and never with
 * NO_COLOR set.
 */
import { createApp, serveOptions } from "../src/app.ts";
import { buildGateway } from "../src/bootstrap.ts";
import { parseConfig } from "../src/config/loader.ts";
import { Logger } from "../src/log.ts";
import { startMockVllm } from "../test/support/mock-vllm.ts";

const once = Bun.argv.includes("--once");
const models = ["llama2-7b", "gpt-3.5-turbo"];

function startMock() {
	const preferred = Number(process.env.MOCK_VLLM_PORT ?? 8000);
	try {
		return startMockVllm({
			port: preferred,
			models,
			record: false,
			behavior: { tokenDelayMs: 20 },
		});
	} catch {
		return startMockVllm({ port: 0, models, record: false, behavior: { tokenDelayMs: 20 } });
	}
}

const mock = startMock();
const yaml = (await Bun.file(new URL("../config/dev.yaml", import.meta.url)).text()).replaceAll(
	"http://localhost:8000",
	mock.url,
);
// The demo chooses its own port (DEMO_PORT): a PORT or SERVER_PORT in the shell is not for it.
const { PORT: _port, SERVER_PORT: _serverPort, ...env } = process.env;
const config = parseConfig(yaml, env, "config/dev.yaml");
const gateway = await buildGateway(config, { logger: new Logger("warn") });
const app = createApp(gateway);
const listen = (port: number) => app.listen(serveOptions(config, { hostname: "127.0.0.1", port }));
try {
	listen(Number(process.env.DEMO_PORT ?? 8080));
} catch {
	listen(0);
}
const base = `http://127.0.0.1:${app.server?.port}`;

const colour = process.stdout.isTTY === true && (process.env.NO_COLOR ?? "") === "";
const bold = (s: string) => (colour ? `\x1b[1m${s}\x1b[0m` : s);
const dim = (s: string) => (colour ? `\x1b[2m${s}\x1b[0m` : s);
const say = (s = "") => process.stdout.write(`${s}\n`);

say(bold("token-rate-limiter demo"));
say(`  gateway   ${base}   (memory store, config/dev.yaml)`);
say(`  mock vLLM ${mock.url}   (serves ${models.join(", ")})`);
say(`  Swagger UI ${base}/swagger`);
say();
say(bold("Try it:"));
say(`curl -s ${base}/v1/chat/completions \\
  -H 'Content-Type: application/json' -H 'X-User-ID: user123' \\
  -d '{"model":"llama2-7b","messages":[{"role":"user","content":"Hello!"}],"max_tokens":50}'`);
say();
say(`curl -N ${base}/v1/chat/completions \\
  -H 'Content-Type: application/json' -H 'X-User-ID: user123' \\
  -d '{"model":"llama2-7b","stream":true,"messages":[{"role":"user","content":"Hello!"}],"max_tokens":20}'`);
say();
say(`curl -s ${base}/api/v1/admin/token-usage/llama2-7b/user123`);
say();
say(dim("# OpenAI SDK (TypeScript): save as hello.ts, then bun add openai && bun hello.ts"));
say(`import OpenAI from "openai";
const client = new OpenAI({ baseURL: "${base}/v1", apiKey: "unused", defaultHeaders: { "X-User-ID": "user123" } });
const reply = await client.chat.completions.create({ model: "llama2-7b", messages: [{ role: "user", content: "Hello!" }] });
console.log(reply.choices[0]?.message.content, reply.usage);`);
say();
say(dim("# OpenAI SDK (Python): pip install openai, then python3 hello.py"));
say(`from openai import OpenAI
client = OpenAI(base_url="${base}/v1", api_key="unused", default_headers={"X-User-ID": "user123"})
reply = client.chat.completions.create(model="llama2-7b", messages=[{"role": "user", "content": "Hello!"}])
print(reply.choices[0].message.content, reply.usage)`);
say();

say(
	bold(
		"Spending demo-user's budget on gpt-3.5-turbo (1000 tokens per minute), ~310 tokens a request:",
	),
);
say(
	dim(
		"  (a rolling window: it refills continuously, about 17 tokens a second, and each request is\n   settled to what it really used, so the remaining figure is not a plain subtraction)",
	),
);
let refused = false;
// Long answers, generated instantly, so each request really spends its allowance.
mock.behavior.outputTokens = 1000;
mock.behavior.tokenDelayMs = 0;
for (let i = 1; i <= 6; i++) {
	const res = await fetch(`${base}/v1/chat/completions`, {
		method: "POST",
		headers: { "content-type": "application/json", "x-user-id": "demo-user" },
		body: JSON.stringify({
			model: "gpt-3.5-turbo",
			messages: [{ role: "user", content: "Tell me about rate limits." }],
			max_tokens: 300,
		}),
	});
	const remaining = res.headers.get("x-ratelimit-remaining-tokens");
	if (res.status === 200) {
		const body = (await res.json()) as { usage: { total_tokens: number } };
		say(
			`  #${i} 200 OK   used ${body.usage.total_tokens} tokens, remaining this minute: ${remaining}`,
		);
		continue;
	}
	const body = await res.text();
	refused = res.status === 429;
	say(
		`  #${i} ${res.status}      Retry-After: ${res.headers.get("retry-after")}s  remaining: ${remaining}`,
	);
	say(`      ${body}`);
	break;
}
mock.behavior.outputTokens = 20;
mock.behavior.tokenDelayMs = 20;
say();
say(
	`Usage now: ${await (await fetch(`${base}/api/v1/admin/token-usage/gpt-3.5-turbo/demo-user`)).text()}`,
);
say();

if (once) {
	await app.stop(true);
	await mock.stop();
	process.exit(refused ? 0 : 1);
}
say(dim("Running. Ctrl-C to stop."));
process.on("SIGINT", async () => {
	await app.stop(true);
	await mock.stop();
	process.exit(0);
});
