const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const ids = new WeakMap<Request, string>();

/**
 * The request's id: the caller's `x-request-id` when it is a sane one, else a
 * new UUID. The same id for the same request wherever it is asked for (routes,
 * error handler, logs, the upstream call).
 */
export function requestIdOf(request: Request): string {
	const known = ids.get(request);
	if (known !== undefined) return known;
	const given = request.headers.get("x-request-id");
	const id = given !== null && REQUEST_ID.test(given) ? given : crypto.randomUUID();
	ids.set(request, id);
	return id;
}
