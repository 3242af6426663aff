/**
 * The model's slot was being moved between cluster nodes for longer than the
 * retry budget. Transient and local to one slot: it says nothing about Redis
 * being down. (Its own module, so that code handling it does not load the Redis
 * client: a gateway on the memory store never does.)
 */
export class SlotMigratingError extends Error {
	override readonly name = "SlotMigratingError";
}
