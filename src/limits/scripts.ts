import { createHash } from "node:crypto";
import batchLua from "./lua/batch.lua" with { type: "text" };
import calibrateLua from "./lua/calibrate.lua" with { type: "text" };
import gcraLua from "./lua/gcra.lua" with { type: "text" };
import heartbeatLua from "./lua/heartbeat.lua" with { type: "text" };
import peekLua from "./lua/peek.lua" with { type: "text" };
import queueLua from "./lua/queue.lua" with { type: "text" };
import renewLua from "./lua/renew.lua" with { type: "text" };

/** A Lua script as Redis runs it: the shared GCRA arithmetic, then the script's body. */
export interface LuaScript {
	readonly name: string;
	readonly source: string;
	readonly sha1: string;
}

function script(name: string, body: string): LuaScript {
	const source = `${gcraLua}\n${body}`;
	return { name, source, sha1: createHash("sha1").update(source).digest("hex") };
}

export const SCRIPTS = {
	batch: script("batch", batchLua),
	peek: script("peek", peekLua),
	renew: script("renew", renewLua),
	heartbeat: script("heartbeat", heartbeatLua),
	calibrate: script("calibrate", calibrateLua),
	queue: script("queue", queueLua),
} as const;
