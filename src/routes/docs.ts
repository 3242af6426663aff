import { openapi } from "@elysiajs/openapi";
import { Elysia } from "elysia";
import favicon from "swagger-ui-dist/favicon-32x32.png" with { type: "file" };
import swaggerCss from "swagger-ui-dist/swagger-ui.css" with { type: "file" };
import swaggerJs from "swagger-ui-dist/swagger-ui-bundle.js" with { type: "file" };

/**
 * The OpenAPI document (generated from the routes' TypeBox schemas) at
 * /swagger/json, and Swagger UI at /swagger served from the swagger-ui-dist
 * package, so it works where browsers cannot reach a CDN.
 */
// File imports: paths on disk when run from source, embedded in a `bun build --compile` binary.
const assets: Record<string, { path: string; type: string }> = {
	"swagger-ui.css": { path: swaggerCss, type: "text/css; charset=utf-8" },
	"swagger-ui-bundle.js": { path: swaggerJs, type: "text/javascript; charset=utf-8" },
};

const PAGE = `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8" />
  <meta name="viewport" content="width=device-width, initial-scale=1" />
  <title>token-rate-limiter API</title>
  <link rel="stylesheet" href="/swagger/assets/swagger-ui.css" />
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/swagger/assets/swagger-ui-bundle.js"></script>
  <script>
    window.onload = () => {
      window.ui = SwaggerUIBundle({ url: "/swagger/json", dom_id: "#swagger-ui", deepLinking: true, tryItOutEnabled: true });
    };
  </script>
</body>
</html>`;

export function docsRoutes(version: string) {
	return new Elysia()
		.use(
			openapi({
				path: "/swagger",
				provider: null,
				documentation: {
					info: {
						title: "token-rate-limiter",
						version,
						description:
							"OpenAI-compatible gateway in front of vLLM that spends each caller's token budget per model (tokens per minute, hour and day, and concurrent requests). Errors follow OpenAI's shape.",
					},
					components: {
						securitySchemes: {
							apiKey: {
								type: "apiKey",
								in: "header",
								name: "X-API-Key",
								description:
									"An API key (auth.mode api-key). The same key also works as `Authorization: Bearer <key>`.",
							},
							bearer: {
								type: "http",
								scheme: "bearer",
								bearerFormat: "JWT or API key",
								description: "A JWT (auth.mode jwt) or an API key.",
							},
						},
					},
					// Declared per route as enforced: the callers' routes and the admin routes take a
					// credential (with auth.mode none, development, X-User-ID names the caller instead);
					// health, info and metrics take none.
					tags: [
						{ name: "OpenAI", description: "What the official OpenAI SDKs call." },
						{ name: "Seed API", description: "Paths of the original gateway, kept for its users." },
						{ name: "Admin", description: "Operator views." },
						{ name: "Operations", description: "Health, info and metrics." },
					],
				},
			}),
		)
		.get(
			"/swagger",
			() => new Response(PAGE, { headers: { "content-type": "text/html; charset=utf-8" } }),
			{ detail: { hide: true } },
		)
		.get(
			"/favicon.ico",
			() =>
				new Response(Bun.file(favicon), {
					headers: { "content-type": "image/png", "cache-control": "public, max-age=86400" },
				}),
			{ detail: { hide: true } },
		)
		.get(
			"/swagger/assets/:name",
			({ params, set }) => {
				const asset = assets[params.name];
				if (asset === undefined) {
					set.status = 404;
					return "not found";
				}
				return new Response(Bun.file(asset.path), {
					headers: { "content-type": asset.type, "cache-control": "public, max-age=86400" },
				});
			},
			{ detail: { hide: true } },
		);
}
