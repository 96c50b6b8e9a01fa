import { defineConfig } from "vitest/config";

// The bundle is committed (dist/) and embedded in the gateway binary, and
// the test command rebuilds it and fails on any difference: the output must
// depend on the sources and the lockfile only (no source maps, no dates).
// `npm run dev` serves the sources with hot reload and sends the API's
// paths to a running gateway (NWS_GATEWAY, default the run command's).
const gateway = process.env.NWS_GATEWAY ?? "http://127.0.0.1:3000";
const api = ["/v1", "/ui", "/image", "/status", "/readyz", "/openapi.json"];

export default defineConfig({
  base: "/",
  server: { proxy: Object.fromEntries(api.map((path) => [path, gateway])) },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    target: "es2022",
    sourcemap: false,
    // Every browser that runs ES2022 modules preloads them natively; the
    // polyfill would be inline code the Content-Security-Policy forbids.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
  },
  test: {
    environment: "happy-dom",
    include: ["src/**/*.test.{ts,tsx}"],
    setupFiles: ["src/test-setup.ts"],
  },
});
