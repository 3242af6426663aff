/** Files imported `with { type: "file" }`: their path, embedded by `bun build --compile`. */
declare module "swagger-ui-dist/*.css" {
	const path: string;
	export default path;
}
declare module "swagger-ui-dist/*.png" {
	const path: string;
	export default path;
}
declare module "swagger-ui-dist/swagger-ui-bundle.js" {
	const path: string;
	export default path;
}
declare module "*.wasm" {
	const path: string;
	export default path;
}
declare module "*.ranks" {
	const path: string;
	export default path;
}
