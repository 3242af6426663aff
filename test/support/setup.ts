import { setDefaultTimeout } from "bun:test";

// Integration tests start real servers (mock vLLM, Redis, Redis Cluster, gateway
// processes); a few take several seconds on a 2-core machine.
setDefaultTimeout(30_000);
