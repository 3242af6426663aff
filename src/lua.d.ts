/** Lua scripts are imported as text (`with { type: "text" }`) and embedded in builds. */
declare module "*.lua" {
	const text: string;
	export default text;
}
