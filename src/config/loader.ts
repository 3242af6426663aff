import { accessSync, constants, existsSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { type ValueError, ValueErrorType } from "@sinclair/typebox/errors";
import { Value } from "@sinclair/typebox/value";
import {
	type ApiKeyConfig,
	type AuthConfig,
	type AuthMode,
	type CalibrationConfig,
	type ChatTemplateName,
	type GatewayConfig,
	type LogLevel,
	type ModelConfig,
	type RawConfig,
	RawConfigSchema,
	type RawModelLimits,
	type SchemaWithExpected,
	type TokenizerSpec,
	type WindowLimit,
	type WindowName,
} from "./schema.ts";

/** A configuration that cannot be used; `problems` each name the key path. */
export class ConfigError extends Error {
	constructor(
		readonly source: string,
		readonly problems: readonly string[],
	) {
		super(`invalid configuration (${source}):\n  ${problems.join("\n  ")}`);
		this.name = "ConfigError";
	}
}

export type Env = Readonly<Record<string, string | undefined>>;

const MINUTE_US = 60_000_000;
const HOUR_US = 60 * MINUTE_US;
const DAY_US = 24 * HOUR_US;
const DEFAULT_TIMEOUT_MS = 600_000;
const DEFAULT_IDLE_TIMEOUT_MS = 120_000;
/**
 * A request finding every slot taken waits up to 30 s: far below the OpenAI
 * SDKs' own timeout (10 minutes), so a client hears a clear 429 with
 * Retry-After rather than hanging, and long enough to ride out the turnover of
 * a busy vLLM batch.
 */
const DEFAULT_QUEUE_WAIT_MS = 30_000;
/** At most 100 waiting per model and replica: a bound on memory, and on how long the tail waits. */
const DEFAULT_MAX_QUEUED = 100;
const DEFAULT_MAX_TOKENS = 256;
const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;

/**
 * Where the configuration file is: `--config <path>` (or `--config=<path>`), else
 * `TRL_CONFIG`, else `config/dev.yaml`.
 */
export function configPathFrom(argv: readonly string[], env: Env): string {
	for (let i = 0; i < argv.length; i++) {
		const arg = argv[i];
		if (arg === "--config") {
			const next = argv[i + 1];
			if (next !== undefined) return next;
		} else if (arg?.startsWith("--config=")) {
			return arg.slice("--config=".length);
		}
	}
	return env.TRL_CONFIG ?? "config/dev.yaml";
}

/** Reads, resolves and validates a configuration file; throws ConfigError. */
export async function loadConfigFile(path: string, env: Env): Promise<GatewayConfig> {
	const file = Bun.file(path);
	if (!(await file.exists())) throw new ConfigError(path, [`file not found: ${path}`]);
	return parseConfig(await file.text(), env, path);
}

/** Parses YAML text into a validated configuration; throws ConfigError. */
export function parseConfig(yamlText: string, env: Env, source = "<inline>"): GatewayConfig {
	// Bun's parser says only that there is an error, and keeps the last of a key given
	// twice silently: then the `yaml` library (loaded only then: it costs memory) says
	// where the problem is, and refuses the repeated key.
	let parsed: unknown;
	let failure: unknown;
	try {
		parsed = Bun.YAML.parse(yamlText);
	} catch (err) {
		failure = err;
	}
	if (failure !== undefined || mayRepeatKey(yamlText)) {
		const problem = yamlProblem(yamlText);
		if (problem !== undefined) throw new ConfigError(source, [problem]);
		if (failure !== undefined) {
			throw new ConfigError(source, [
				`not valid YAML: ${failure instanceof Error ? failure.message : String(failure)}`,
			]);
		}
	}
	if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
		throw new ConfigError(source, ["the file must be a YAML mapping at the top level"]);
	}
	const problems: string[] = [];
	const resolved = resolvePlaceholders(parsed, env, [], problems);
	if (problems.length > 0) throw new ConfigError(source, problems);
	const fileHasRedis =
		resolved !== null &&
		typeof resolved === "object" &&
		"spring" in resolved &&
		resolved.spring !== null &&
		typeof resolved.spring === "object" &&
		"data" in resolved.spring &&
		resolved.spring.data !== null &&
		typeof resolved.spring.data === "object" &&
		"redis" in resolved.spring.data;
	const fileHasPort =
		resolved !== null &&
		typeof resolved === "object" &&
		"server" in resolved &&
		resolved.server !== null &&
		typeof resolved.server === "object" &&
		"port" in resolved.server;
	const portFrom =
		env.SERVER_PORT !== undefined
			? "SERVER_PORT"
			: env.PORT !== undefined
				? "PORT"
				: fileHasPort
					? "server.port"
					: "default";
	applyEnvOverrides(resolved, env, problems);
	if (problems.length > 0) throw new ConfigError(source, problems);
	const refused = refusedSpring(resolved);
	if (refused.length > 0) throw new ConfigError(source, refused);
	const ignored = takeSpringOnly(resolved);
	if (!Value.Check(RawConfigSchema, resolved)) {
		throw new ConfigError(source, schemaProblems(resolved));
	}
	const config = normalise(resolved, source, fileHasRedis);
	return {
		...config,
		server: { ...config.server, portFrom },
		ignoredSettings: ignored,
	};
}

/**
 * Whether a block mapping of `text` may give one key twice: a quick look at
 * each line's indentation and key (block scalars skipped), that decides only
 * whether the `yaml` library looks closer.
 */
export function mayRepeatKey(text: string): boolean {
	const frames: { indent: number; keys: Set<string> }[] = [];
	let scalarAbove = -1;
	for (const raw of text.split(/\r?\n/)) {
		if (raw.trim() === "" || raw.trimStart().startsWith("#")) continue;
		const indent = raw.length - raw.trimStart().length;
		if (scalarAbove >= 0) {
			if (indent > scalarAbove) continue;
			scalarAbove = -1;
		}
		const m = /^(\s*)(- +)?([^\s#'"[{][^:#]*?|"[^"]*"|'[^']*'):(?:\s+(.*))?$/.exec(raw);
		if (m === null) continue;
		const keyIndent = (m[1] ?? "").length + (m[2] ?? "").length;
		while (frames.length > 0 && (frames[frames.length - 1]?.indent ?? 0) > keyIndent) frames.pop();
		const top = frames[frames.length - 1];
		const key = m[3] ?? "";
		if (m[2] !== undefined || top === undefined || top.indent < keyIndent) {
			// A list item starts a new mapping; so does a deeper key.
			if (m[2] !== undefined && top !== undefined && top.indent === keyIndent) frames.pop();
			frames.push({ indent: keyIndent, keys: new Set([key]) });
		} else if (top.keys.has(key)) {
			return true;
		} else {
			top.keys.add(key);
		}
		if (/^[|>][-+0-9]*\s*(#.*)?$/.test((m[4] ?? "").trim())) scalarAbove = keyIndent;
	}
	return false;
}

/**
 * Where a file that is not YAML goes wrong: the line, the column and the line
 * itself with a caret, as the `yaml` library locates it (Bun's parser says only
 * that there is an error).
 */
function yamlProblem(text: string): string | undefined {
	const { parseDocument } = require("yaml") as typeof import("yaml");
	const first = parseDocument(text, { prettyErrors: true, uniqueKeys: true }).errors[0];
	if (first === undefined) return undefined;
	const reason = first.message.split(" at line ")[0]?.split("\n")[0] ?? first.message;
	const at = first.linePos?.[0];
	if (at === undefined) return `not valid YAML: ${reason}`;
	const line = text.split(/\r?\n/)[at.line - 1] ?? "";
	const gutter = `${at.line} | `;
	return `not valid YAML at line ${at.line}, column ${at.col}: ${reason}\n    ${gutter}${line}\n    ${" ".repeat(gutter.length + at.col - 1)}^`;
}

/**
 * Spring-style `${NAME}` and `${NAME:default}` placeholders, as the seed's
 * application.yml uses them. A value that is one placeholder takes the type of
 * what it resolves to (`${REDIS_PORT:6379}` is the number 6379).
 */
function resolvePlaceholders(
	node: unknown,
	env: Env,
	path: readonly string[],
	problems: string[],
): unknown {
	if (typeof node === "string") return resolveString(node, env, path, problems);
	if (Array.isArray(node)) {
		return node.map((item, i) => resolvePlaceholders(item, env, [...path, String(i)], problems));
	}
	if (node !== null && typeof node === "object") {
		const out: Record<string, unknown> = {};
		for (const [key, value] of Object.entries(node)) {
			out[key] = resolvePlaceholders(value, env, [...path, key], problems);
		}
		return out;
	}
	return node;
}

const PLACEHOLDER = /\$\{([A-Za-z_][A-Za-z0-9_.-]*)(?::([^}]*))?\}/g;

function resolveString(
	text: string,
	env: Env,
	path: readonly string[],
	problems: string[],
): unknown {
	if (!text.includes("${")) return text;
	const whole = /^\$\{([A-Za-z_][A-Za-z0-9_.-]*)(?::([^}]*))?\}$/.exec(text);
	const lookup = (name: string, fallback: string | undefined): string => {
		const value = env[name] ?? fallback;
		if (value === undefined) {
			problems.push(
				`${path.join(".")}: environment variable ${name} is not set and has no default`,
			);
			return "";
		}
		return value;
	};
	if (whole?.[1] !== undefined) {
		const value = lookup(whole[1], whole[2]);
		return scalarFromText(value);
	}
	return text.replace(PLACEHOLDER, (_m, name: string, fallback: string | undefined) =>
		lookup(name, fallback),
	);
}

function scalarFromText(text: string): unknown {
	if (/^-?\d+$/.test(text)) return Number(text);
	if (/^-?\d+\.\d+$/.test(text)) return Number(text);
	if (text === "true") return true;
	if (text === "false") return false;
	return text;
}

/**
 * REDIS_HOST / REDIS_PORT win over the file, as in the seed; SERVER_PORT (as in
 * Spring), else PORT, over `server.port`.
 */
function applyEnvOverrides(config: unknown, env: Env, problems: string[]): void {
	if (config === null || typeof config !== "object") return;
	const root = config as Record<string, unknown>;
	const portVar =
		env.SERVER_PORT !== undefined ? "SERVER_PORT" : env.PORT !== undefined ? "PORT" : undefined;
	if (portVar !== undefined) {
		const text = (env[portVar] ?? "").trim();
		const port = /^\d+$/.test(text) ? Number(text) : Number.NaN;
		if (!Number.isInteger(port) || port < 0 || port > 65535) {
			problems.push(
				`${portVar} (environment): expected a port number (0-65535) for server.port, got ${show(env[portVar])}`,
			);
		} else objectAt(root, "server").port = port;
	}
	if (env.REDIS_HOST === undefined && env.REDIS_PORT === undefined) return;
	const spring = objectAt(root, "spring");
	const data = objectAt(spring, "data");
	const redis = objectAt(data, "redis");
	if (env.REDIS_HOST !== undefined) redis.host = env.REDIS_HOST;
	if (env.REDIS_PORT !== undefined) redis.port = scalarFromText(env.REDIS_PORT);
}

function objectAt(parent: Record<string, unknown>, key: string): Record<string, unknown> {
	const existing = parent[key];
	if (existing !== null && typeof existing === "object" && !Array.isArray(existing)) {
		return existing as Record<string, unknown>;
	}
	const created: Record<string, unknown> = {};
	parent[key] = created;
	return created;
}

function dotted(pointer: string): string {
	if (pointer === "") return "(top level)";
	return pointer
		.slice(1)
		.split("/")
		.map((part) => part.replaceAll("~1", "/").replaceAll("~0", "~"))
		.join(".");
}

function show(value: unknown): string {
	if (value === undefined) return "nothing";
	const text = JSON.stringify(value);
	return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function schemaProblems(value: unknown): string[] {
	const out: string[] = [];
	describeErrors(Value.Errors(RawConfigSchema, value), new Set<string>(), out);
	return out;
}

export function isPlainObject(value: unknown): value is Record<string, unknown> {
	return value !== null && typeof value === "object" && !Array.isArray(value);
}

function describeErrors(errors: Iterable<ValueError>, seen: Set<string>, out: string[]): void {
	for (const error of errors) {
		const schema = error.schema as SchemaWithExpected;
		let line: string;
		if (error.type === ValueErrorType.ObjectAdditionalProperties) {
			// TypeBox (0.34) reports each unknown key at its own path, with the key's
			// value (not the parent object) as `error.value`.
			if (seen.has(error.path)) continue;
			seen.add(error.path);
			const allowed = Object.keys(
				(schema as SchemaWithExpected & { properties?: object }).properties ?? {},
			);
			const key = dotted(error.path).split(".").pop() ?? "";
			const near = closestKey(key, allowed);
			out.push(
				`${dotted(error.path)}: unknown key${near === undefined ? "" : `; did you mean ${near}?`} (allowed: ${allowed.join(", ")})`,
			);
			continue;
		}
		if (seen.has(error.path)) continue;
		seen.add(error.path);
		if (
			error.type === ValueErrorType.Union &&
			schema.objectErrors === true &&
			isPlainObject(error.value)
		) {
			// The object form was meant: name its own problems, key by key.
			const nested = error.errors
				.map((variant) => [...variant])
				.find((list) => list.length > 0 && list.every((e) => e.path.startsWith(`${error.path}/`)));
			if (nested !== undefined) {
				describeErrors(nested, seen, out);
				continue;
			}
		}
		if (error.type === ValueErrorType.ObjectRequiredProperty || error.value === undefined) {
			line = `${dotted(error.path)}: is required (${schema.expected ?? error.message})`;
		} else {
			line = `${dotted(error.path)}: expected ${schema.expected ?? error.message.toLowerCase()}, got ${show(error.value)}`;
		}
		out.push(line);
	}
}

/**
 * `base` with the windows of `over` put in: a window of the same kind (tokens per
 * minute, hour, day; requests per minute) is replaced, others are added, and
 * the rest of `base` stays. An override of one window never drops the others.
 */
export function mergeWindows(
	base: readonly WindowLimit[],
	over: readonly WindowLimit[] | undefined,
): readonly WindowLimit[] {
	if (over === undefined || over.length === 0) return base;
	const kind = (w: WindowLimit) => `${w.perRequest === true ? "requests" : "tokens"}:${w.name}`;
	const replaced = new Set(over.map(kind));
	return [...base.filter((w) => !replaced.has(kind(w))), ...over];
}

/** Windows back in the file's terms: `{max-tokens-per-minute: 2000, max-requests-per-minute: 60}`. */
export function limitsOf(windows: readonly WindowLimit[]): Record<string, number> {
	const out: Record<string, number> = {};
	for (const w of windows) {
		out[w.perRequest === true ? "max-requests-per-minute" : `max-tokens-per-${w.name}`] =
			w.limitTokens;
	}
	return out;
}

export function windowsFrom(
	limits: {
		"max-tokens-per-minute"?: number;
		"max-tokens-per-hour"?: number;
		"max-tokens-per-day"?: number;
		"max-requests-per-minute"?: number;
	},
	burstFactor: number,
): WindowLimit[] {
	const spec: [WindowName, number, number | undefined, boolean][] = [
		["minute", MINUTE_US, limits["max-tokens-per-minute"], false],
		["hour", HOUR_US, limits["max-tokens-per-hour"], false],
		["day", DAY_US, limits["max-tokens-per-day"], false],
		["minute", MINUTE_US, limits["max-requests-per-minute"], true],
	];
	const out: WindowLimit[] = [];
	for (const [name, windowUs, limitTokens, perRequest] of spec) {
		if (limitTokens === undefined) continue;
		out.push({
			name,
			windowUs,
			limitTokens,
			burstTokens: Math.max(1, Math.floor(limitTokens * burstFactor)),
			...(perRequest ? { perRequest: true } : {}),
		});
	}
	return out;
}

const LEVELS: Record<string, LogLevel> = {
	trace: "debug",
	debug: "debug",
	info: "info",
	warn: "warn",
	warning: "warn",
	error: "error",
	fatal: "error",
	off: "silent",
	silent: "silent",
};

/** `info`, or Spring's `{root: INFO, com.example: DEBUG}` (the root level applies). */
function parseLogLevel(
	value: string | Record<string, string> | undefined,
	problems: string[],
	source: string,
): LogLevel {
	if (value === undefined) return "info";
	const text = typeof value === "string" ? value : value.root;
	if (text === undefined) return "info";
	const level = LEVELS[text.toLowerCase()];
	if (level !== undefined) return level;
	problems.push(
		`logging.level${typeof value === "string" ? "" : ".root"}: expected one of debug, info, warn, error, silent, got ${show(text)}`,
	);
	throw new ConfigError(source, problems);
}

function authFrom(raw: RawConfig, problems: string[], source: string): AuthConfig {
	const auth = raw.auth;
	const modeList: AuthMode[] =
		auth?.mode === undefined ? ["none"] : typeof auth.mode === "string" ? [auth.mode] : auth.mode;
	const modes = new Set(modeList);
	const ids = new Set<string>();
	const apiKeys: ApiKeyConfig[] = (auth?.["api-keys"] ?? []).map((k, i) => {
		if (ids.has(k.id)) problems.push(`auth.api-keys.${i}.id: duplicate id ${show(k.id)}`);
		ids.add(k.id);
		const windows = k.limits === undefined ? [] : windowsFrom(k.limits, 1);
		const limits = windows.length === 0 ? undefined : windows;
		return {
			id: k.id,
			sha256: k.hash.slice("sha256:".length),
			user: k.user,
			tenant: k.tenant,
			roles: k.roles ?? [],
			limits,
			concurrency: k.limits?.["max-concurrent-requests"],
			...(k.priority === undefined ? {} : { priority: k.priority }),
		};
	});
	const j = auth?.jwt;
	if (modes.has("jwt")) {
		if (j === undefined || (j.secret === undefined) === (j["jwks-url"] === undefined)) {
			problems.push("auth.jwt: with mode jwt, give exactly one of secret or jwks-url");
		}
	}
	if (j?.["jwks-url"] !== undefined) checkUrl(j["jwks-url"], "auth.jwt.jwks-url", problems);
	if (problems.length > 0) throw new ConfigError(source, problems);
	return {
		modes,
		apiKeys,
		jwt:
			j === undefined
				? undefined
				: {
						secret: j.secret,
						jwksUrl: j["jwks-url"],
						issuer: j.issuer,
						audience: j.audience,
						algorithms: j.algorithms,
						userClaim: j.claims?.user ?? "sub",
						tenantClaim: j.claims?.tenant ?? "tenant",
						rolesClaim: j.claims?.roles ?? "roles",
						priorityClaim: j.claims?.priority ?? "priority",
						clockToleranceS: j["clock-tolerance-s"] ?? 30,
					},
	};
}

function checkUrl(url: string, where: string, problems: string[]): void {
	let parsed: URL | undefined;
	try {
		parsed = new URL(url);
	} catch {
		parsed = undefined;
	}
	if (parsed === undefined || (parsed.protocol !== "http:" && parsed.protocol !== "https:")) {
		problems.push(`${where}: expected an http(s) URL, got ${show(url)}`);
	}
}

/** Named split patterns of tiktoken rank files. */
export const RANK_FILE_PATTERNS = ["llama3", "cl100k_base", "o200k_base"] as const;

/**
 * The model's tokenizer. Files are checked here (present, readable, a file or
 * for huggingface a model directory), so a wrong path stops the boot or the
 * reload naming the key; their content is checked when the counters load.
 */
function tokenizerFrom(
	raw: RawModelLimits["tokenizer"],
	where: string,
	problems: string[],
): TokenizerSpec {
	if (raw === undefined || typeof raw === "string") {
		const kind = raw ?? "cl100k_base";
		return { kind, path: undefined, pattern: undefined, chatTemplate: undefined, key: kind, where };
	}
	const chatTemplate: ChatTemplateName | undefined = raw["chat-template"];
	if (raw.kind === "cl100k_base" || raw.kind === "o200k_base") {
		if (raw.path !== undefined)
			problems.push(`${where}.path: ${raw.kind} is built in; remove path`);
		if (raw.pattern !== undefined) problems.push(`${where}.pattern: only for kind tiktoken-ranks`);
		return {
			kind: raw.kind,
			path: undefined,
			pattern: undefined,
			chatTemplate,
			key: raw.kind,
			where,
		};
	}
	const path = raw.path;
	if (path === undefined) {
		problems.push(`${where}.path: is required with kind ${raw.kind} (the tokenizer file)`);
		return { kind: raw.kind, path, pattern: undefined, chatTemplate, key: raw.kind, where };
	}
	const pattern = raw.kind === "tiktoken-ranks" ? (raw.pattern ?? "llama3") : undefined;
	if (raw.kind === "huggingface" && raw.pattern !== undefined) {
		problems.push(`${where}.pattern: only for kind tiktoken-ranks (tokenizer.json has its own)`);
	}
	if (pattern !== undefined && !(RANK_FILE_PATTERNS as readonly string[]).includes(pattern)) {
		try {
			new RegExp(pattern, "gu");
		} catch (err) {
			problems.push(
				`${where}.pattern: not a valid regular expression (${err instanceof Error ? err.message : String(err)})`,
			);
		}
	}
	let stat: ReturnType<typeof statSync> | undefined;
	try {
		stat = existsSync(path) ? statSync(path) : undefined;
	} catch {
		stat = undefined;
	}
	const allowed = (p: string, mode: number) => {
		try {
			accessSync(p, mode);
			return true;
		} catch {
			return false;
		}
	};
	const readable = (p: string) => allowed(p, constants.R_OK);
	const parent = dirname(path);
	const searchable = (p: string) => allowed(p, constants.X_OK);
	if (stat === undefined && existsSync(parent) && !searchable(parent)) {
		problems.push(`${where}.path: ${path} cannot be reached (permission denied on ${parent})`);
	} else if (stat === undefined) {
		problems.push(`${where}.path: no such file: ${path}`);
	} else if (stat.isDirectory() && raw.kind !== "huggingface") {
		problems.push(
			`${where}.path: ${path} is a directory; give the rank file (e.g. tokenizer.model)`,
		);
	} else if (stat.isDirectory() && !readable(path)) {
		problems.push(`${where}.path: ${path} cannot be read (permission denied)`);
	} else if (stat.isDirectory() && !existsSync(`${path}/tokenizer.json`)) {
		problems.push(`${where}.path: ${path} holds no tokenizer.json`);
	} else if (!stat.isDirectory() && !stat.isFile()) {
		problems.push(`${where}.path: ${path} is not a regular file`);
	} else if (!readable(stat.isDirectory() ? `${path}/tokenizer.json` : path)) {
		problems.push(`${where}.path: ${path} cannot be read (permission denied)`);
	}
	return {
		kind: raw.kind,
		path,
		pattern,
		chatTemplate,
		key: `${raw.kind}:${path}${pattern === undefined ? "" : `:${pattern}`}`,
		where,
	};
}

function calibrationFrom(raw: RawModelLimits["calibration"]): CalibrationConfig {
	if (raw === undefined || typeof raw === "boolean") {
		return { enabled: raw ?? true, ratio: undefined, direction: "up" };
	}
	return { enabled: raw.enabled ?? true, ratio: raw.ratio, direction: raw.direction ?? "up" };
}

/**
 * Settings a Spring application.yml of the original gateway may carry that this
 * gateway has no use for. They are taken out before the schema (which refuses
 * every other unknown key) and listed in a warning at boot, never silently
 * dropped.
 */
export const SPRING_ONLY_SETTINGS: readonly string[] = [
	"management",
	"info",
	"springdoc",
	"eureka",
	"spring.application",
	"spring.main",
	"spring.profiles",
	"spring.config",
	"spring.jackson",
	"spring.cloud",
	"spring.lifecycle",
	"spring.data.redis.timeout",
	"spring.data.redis.connect-timeout",
	"spring.data.redis.client-name",
	"spring.data.redis.client-type",
	"spring.data.redis.lettuce",
	"spring.data.redis.jedis",
	"spring.data.redis.repositories",
	"spring.data.redis.ssl.bundle",
	"spring.data.redis.cluster.max-redirects",
	"logging.pattern",
	"logging.file",
	"logging.config",
	"logging.logback",
	"logging.charset",
	"logging.group",
	"logging.register-shutdown-hook",
	"server.servlet",
	"server.shutdown",
	"server.compression",
	"server.tomcat",
	"server.netty",
	"server.error",
	"server.http2",
	"server.forward-headers-strategy",
];

/**
 * Spring settings whose silent absence would mislead: refused, saying what to
 * do instead.
 */
const SPRING_REFUSED: Readonly<Record<string, string>> = {
	"server.ssl":
		"the gateway serves plain HTTP; terminate TLS in front of it (an Ingress or a load balancer) and remove server.ssl",
	"spring.data.redis.sentinel":
		"Redis Sentinel is not supported; give the primary's address (host/port or url) or use store: redis-cluster",
};

/** Problems for the SPRING_REFUSED settings present in `config`. */
function refusedSpring(config: unknown): string[] {
	const out: string[] = [];
	for (const [path, reason] of Object.entries(SPRING_REFUSED)) {
		let node: unknown = config;
		for (const part of path.split(".")) {
			node =
				node !== null && typeof node === "object" && !Array.isArray(node)
					? (node as Record<string, unknown>)[part]
					: undefined;
		}
		if (node !== undefined) out.push(`${path}: ${reason}`);
	}
	return out;
}

/** Removes the SPRING_ONLY_SETTINGS present in `config`; returns their paths. */
function takeSpringOnly(config: unknown): string[] {
	const taken: string[] = [];
	for (const path of SPRING_ONLY_SETTINGS) {
		const parts = path.split(".");
		let node: unknown = config;
		for (const part of parts.slice(0, -1)) {
			node =
				node !== null && typeof node === "object" && !Array.isArray(node)
					? (node as Record<string, unknown>)[part]
					: undefined;
		}
		const last = parts[parts.length - 1] ?? "";
		if (node !== null && typeof node === "object" && !Array.isArray(node) && last in node) {
			delete (node as Record<string, unknown>)[last];
			taken.push(path);
		}
	}
	return taken;
}

/** The allowed key closest to `key` by edit distance, when it is close enough to be a typo. */
export function closestKey(key: string, allowed: readonly string[]): string | undefined {
	let best: string | undefined;
	let bestDistance = Number.POSITIVE_INFINITY;
	for (const candidate of allowed) {
		const d = editDistance(key.toLowerCase(), candidate.toLowerCase());
		if (d < bestDistance) {
			best = candidate;
			bestDistance = d;
		}
	}
	return best !== undefined && bestDistance <= Math.max(2, Math.floor(key.length / 3))
		? best
		: undefined;
}

function editDistance(a: string, b: string): number {
	let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
	for (let i = 1; i <= a.length; i++) {
		const current = [i];
		for (let j = 1; j <= b.length; j++) {
			const substitute = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
			current[j] = Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitute);
		}
		previous = current;
	}
	return previous[b.length] ?? 0;
}

function normalise(
	raw: RawConfig,
	source: string,
	/** The file itself configures spring.data.redis (REDIS_HOST / REDIS_PORT alone do not count). */
	fileHasRedis: boolean,
): Omit<GatewayConfig, "ignoredSettings" | "server"> & {
	server: Omit<GatewayConfig["server"], "portFrom">;
} {
	const problems: string[] = [];
	const limitsById = raw.token["rate-limit"].models;
	const services = raw.vllm.services;
	const defaultTimeoutMs = raw.vllm["timeout-ms"] ?? DEFAULT_TIMEOUT_MS;
	const models = new Map<string, ModelConfig>();

	for (const id of Object.keys(limitsById)) {
		if (!(id in services)) {
			problems.push(
				`token.rate-limit.models.${id}: no upstream for this model (add vllm.services.${id}: <url>)`,
			);
		}
	}
	for (const [id, service] of Object.entries(services)) {
		const limits = limitsById[id];
		const where = `vllm.services.${id}`;
		if (limits === undefined) {
			problems.push(
				`${where}: no limits for this model (add token.rate-limit.models.${id} with at least one limit)`,
			);
			continue;
		}
		let urls: string[];
		let upstreamModel = id;
		let timeoutMs = defaultTimeoutMs;
		let firstByteTimeoutMs = raw.vllm["first-byte-timeout-ms"];
		let idleTimeoutMs = raw.vllm["idle-timeout-ms"] ?? DEFAULT_IDLE_TIMEOUT_MS;
		if (typeof service === "string") urls = [service];
		else if (Array.isArray(service)) urls = service;
		else {
			urls = typeof service.urls === "string" ? [service.urls] : service.urls;
			upstreamModel = service["upstream-model"] ?? id;
			timeoutMs = service["timeout-ms"] ?? defaultTimeoutMs;
			firstByteTimeoutMs = service["first-byte-timeout-ms"] ?? firstByteTimeoutMs;
			idleTimeoutMs = service["idle-timeout-ms"] ?? idleTimeoutMs;
		}
		urls.forEach((url, i) => {
			checkUrl(url, urls.length === 1 ? where : `${where}.${i}`, problems);
		});
		const burstFactor = limits["burst-factor"] ?? 1;
		const userWindows = windowsFrom(limits, burstFactor);
		const modelWindows = windowsFrom(limits["model-wide"] ?? {}, burstFactor);
		const tenantWindows = windowsFrom(limits.tenant ?? {}, burstFactor);
		if (
			userWindows.length === 0 &&
			modelWindows.length === 0 &&
			tenantWindows.length === 0 &&
			limits["max-concurrent-requests"] === undefined
		) {
			problems.push(
				`token.rate-limit.models.${id}: sets no limit (give max-tokens-per-minute|hour|day or max-concurrent-requests)`,
			);
		}
		models.set(id, {
			id,
			upstreamModel,
			upstreamUrls: urls.map((u) => u.replace(/\/+$/, "")),
			timeoutMs,
			firstByteTimeoutMs: Math.min(firstByteTimeoutMs ?? timeoutMs, timeoutMs),
			idleTimeoutMs,
			tokenizer: tokenizerFrom(
				limits.tokenizer,
				`token.rate-limit.models.${id}.tokenizer`,
				problems,
			),
			calibration: calibrationFrom(limits.calibration),
			defaultMaxTokens: limits["default-max-tokens"] ?? DEFAULT_MAX_TOKENS,
			exactCount:
				limits["exact-count"] === undefined
					? undefined
					: {
							aboveTokens: limits["exact-count"]["above-tokens"],
							timeoutMs: limits["exact-count"]["timeout-ms"] ?? 1000,
						},
			maxConcurrentRequests: limits["max-concurrent-requests"],
			queue: {
				maxWaitMs: limits["max-queue-wait-ms"] ?? DEFAULT_QUEUE_WAIT_MS,
				maxQueued: limits["max-queued-requests"] ?? DEFAULT_MAX_QUEUED,
			},
			userWindows,
			modelWindows,
			tenantWindows,
		});
	}
	if (problems.length > 0) throw new ConfigError(source, problems);

	const redis = raw.spring?.data?.redis;
	const ext = raw.redis;
	const nodesRaw = redis?.cluster?.nodes;
	const clusterNodes = (typeof nodesRaw === "string" ? nodesRaw.split(",") : (nodesRaw ?? []))
		.map((n) => n.trim())
		.filter((n) => n.length > 0);
	// The original gateway always kept its state in Redis: an application.yml that
	// configures spring.data.redis and names no store means Redis.
	const store = raw.store ?? (fileHasRedis ? "redis" : "memory");
	const storeReason =
		raw.store !== undefined
			? "store"
			: !fileHasRedis
				? "the default (no store, no spring.data.redis in the file)"
				: "spring.data.redis is configured and store is not (store: memory keeps limits in this process)";
	if (store === "redis-cluster" && clusterNodes.length === 0 && redis?.url === undefined) {
		problems.push(
			"spring.data.redis.cluster.nodes: is required with store: redis-cluster (host:port of at least one node)",
		);
	}
	if (redis?.url !== undefined && !/^rediss?:\/\//.test(redis.url)) {
		problems.push(
			`spring.data.redis.url: expected a redis:// or rediss:// URL, got ${show(redis.url)}`,
		);
	}
	if (problems.length > 0) throw new ConfigError(source, problems);
	return {
		server: {
			host: raw.server?.host ?? "0.0.0.0",
			port: raw.server?.port ?? 8080,
			maxBodyBytes: raw.server?.["max-body-bytes"] ?? DEFAULT_MAX_BODY_BYTES,
			maxMessages: raw.server?.["max-messages"] ?? 2048,
			maxPromptTokens: raw.server?.["max-prompt-tokens"],
			drainMs: raw.server?.["drain-ms"] ?? 30_000,
		},
		store,
		storeReason,
		redis: {
			host: redis?.host ?? "localhost",
			port: redis?.port ?? 6379,
			url: redis?.url,
			// An empty value (an unset ${REDIS_PASSWORD:}) means none.
			username: redis?.username === "" ? undefined : redis?.username,
			password:
				redis?.password === undefined || redis.password === "" ? undefined : String(redis.password),
			database: redis?.database ?? 0,
			tls: redis?.ssl?.enabled === true || (redis?.url?.startsWith("rediss://") ?? false),
			clusterNodes,
			timeoutMs: ext?.["timeout-ms"] ?? 100,
			failurePolicy: ext?.["failure-policy"] ?? "local",
			replicas: ext?.replicas,
			leaseTtlMs: ext?.["lease-ttl-ms"] ?? 30_000,
			heartbeatMs: ext?.["heartbeat-ms"] ?? 5_000,
		},
		logLevel: parseLogLevel(raw.logging?.level, problems, source),
		metrics: { perUserLabels: raw.metrics?.["per-user-labels"] ?? false },
		auth: authFrom(raw, problems, source),
		healthCheckMs: raw.vllm["health-check-ms"] ?? 5000,
		connectTimeoutMs: raw.vllm["connect-timeout-ms"] ?? 2000,
		loadPollMs: raw.vllm["load-poll-ms"] ?? 0,
		shedWaitingAbove: raw.vllm["shed-waiting-above"],
		models,
	};
}
