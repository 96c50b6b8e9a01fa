// The page: settings on one side, dropped images as cards on the other.
// Uploads run two at a time (the gateway's default rate allows bursts of
// ten, then two a second); a queued job is followed until it is done.

import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { ApiError, fetchResult, followJob, upload, type Result } from "./api";
import type { GatewayConfig } from "./config";
import { formatBytes } from "./format";
import { jobPipeline, type Pipeline } from "./timing";
import { defaults, restore, save, toFields, type Settings } from "./settings";
import { Card, type Item, type Phase } from "./components/Card";
import { DropZone } from "./components/DropZone";
import { SettingsPanel } from "./components/SettingsPanel";

const IN_FLIGHT = 2;
const TOKEN_KEY = "nws-watermark.token";

export function App({ config }: { config: GatewayConfig }) {
  const [settings, setSettings] = useState<Settings>(() => restore(config.options));
  const [logo, setLogo] = useState<File>();
  const [token, setToken] = useState(() => sessionStorage.getItem(TOKEN_KEY) ?? "");
  const [items, setItems] = useState<Item[]>([]);
  const nextId = useRef(1);
  const running = useRef(new Set<number>());
  const aborts = useRef(new Map<number, AbortController>());
  // The values an upload starts with: read when it starts, not when it was dropped.
  const current = useRef({ settings, logo, token });
  current.current = { settings, logo, token };

  useEffect(() => save(settings), [settings]);
  useEffect(() => {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  }, [token]);

  const setPhase = useCallback((id: number, phase: Phase) => {
    setItems((all) => all.map((item) => (item.id === id ? { ...item, phase } : item)));
  }, []);

  const finish = useCallback(
    (id: number, result: Result, queued: boolean, jobPipeline?: Pipeline) => {
      setPhase(id, { kind: "done", result, url: URL.createObjectURL(result.blob), queued, jobPipeline });
    },
    [setPhase],
  );

  const fail = useCallback(
    (id: number, error: unknown) => {
      const apiError = error instanceof ApiError ? error : new ApiError(0, "UNKNOWN", String(error));
      setPhase(id, { kind: "error", error: apiError, at: Date.now() });
    },
    [setPhase],
  );

  const run = useCallback(
    async (item: Item) => {
      const { settings, logo, token } = current.current;
      const abort = new AbortController();
      aborts.current.set(item.id, abort);
      running.current.add(item.id);
      try {
        if (item.file.size > config.max_upload_bytes) {
          throw new ApiError(
            413,
            "CHECKED_IN_BROWSER",
            `${item.file.name} is ${formatBytes(item.file.size)}, over the server's ${formatBytes(config.max_upload_bytes)} (NWS_MAX_UPLOAD_BYTES); nothing was sent`,
          );
        }
        setPhase(item.id, { kind: "uploading", sent: 0, total: item.file.size });
        const outcome = await upload({
          file: item.file,
          fields: toFields(settings, config.options),
          logo,
          token: token || undefined,
          signal: abort.signal,
          onProgress: (sent, total) => setPhase(item.id, { kind: "uploading", sent, total }),
          onSent: () => setPhase(item.id, { kind: "processing" }),
        });
        if (outcome.kind === "result") return finish(item.id, outcome.result, false);
        // Kept as a job: followed outside the upload slots.
        running.current.delete(item.id);
        setItems((all) => [...all]);
        setPhase(item.id, { kind: "queued", job: outcome.job });
        const final = await followJob(outcome.job, {
          onChange: (job) => setPhase(item.id, { kind: "queued", job }),
          signal: abort.signal,
          token: token || undefined,
        });
        if (final.status !== "done" || !final.result) {
          throw new ApiError(500, final.error_code ?? "FAILED", final.error ?? "the queued job failed");
        }
        const result = await fetchResult(final.result, token || undefined, abort.signal);
        finish(item.id, result, true, final.timings ? jobPipeline(final.timings) : undefined);
      } catch (error) {
        if (!abort.signal.aborted) fail(item.id, error);
      } finally {
        running.current.delete(item.id);
        aborts.current.delete(item.id);
        // Wakes the scheduler.
        setItems((all) => [...all]);
      }
    },
    [config, setPhase, finish, fail],
  );

  // Starts waiting uploads while there is room.
  useEffect(() => {
    for (const item of items) {
      if (running.current.size >= IN_FLIGHT) break;
      if (item.phase.kind === "waiting" && !running.current.has(item.id) && !aborts.current.has(item.id)) {
        void run(item);
      }
    }
  }, [items, run]);

  const addFiles = useCallback((files: File[]) => {
    setItems((all) => [
      ...files.map((file) => ({
        id: nextId.current++,
        file,
        originalUrl: URL.createObjectURL(file),
        phase: { kind: "waiting" } as Phase,
      })),
      ...all,
    ]);
  }, []);

  const retry = useCallback((id: number) => setPhase(id, { kind: "waiting" }), [setPhase]);
  const remove = useCallback((id: number) => {
    aborts.current.get(id)?.abort();
    setItems((all) => {
      const gone = all.find((item) => item.id === id);
      if (gone) {
        URL.revokeObjectURL(gone.originalUrl);
        if (gone.phase.kind === "done") URL.revokeObjectURL(gone.phase.url);
      }
      return all.filter((item) => item.id !== id);
    });
  }, []);

  const busy = items.filter((i) => ["waiting", "uploading", "processing", "queued"].includes(i.phase.kind)).length;

  return (
    <>
      <header class="top">
        <h1>NWS Watermark</h1>
        <p>Drop photos to resize and watermark them; see the result, and where the time went.</p>
        {config.auth && (
          <div class="token">
            <label for="token">Access token (kept for this browser session only)</label>
            <input
              id="token"
              type="password"
              autoComplete="off"
              spellcheck={false}
              value={token}
              onInput={(e) => setToken(e.currentTarget.value.trim())}
              placeholder="Paste a bearer token"
            />
          </div>
        )}
      </header>
      <div class="layout">
        <aside>
          <SettingsPanel
            settings={settings}
            options={config.options}
            onChange={setSettings}
            logo={logo}
            onLogo={setLogo}
            initiallyOpen={!matchMedia("(max-width: 760px)").matches}
            preview={items.find((item) => item.phase.kind === "done")?.originalUrl}
            onReset={() => {
              setSettings(defaults(config.options));
              setLogo(undefined);
            }}
          />
        </aside>
        <main>
          <h2 class="visually-hidden">Images</h2>
          <DropZone onFiles={addFiles} maxUploadBytes={config.max_upload_bytes} />
          <p class="visually-hidden" role="status" aria-live="polite">
            {busy > 0
              ? `${busy} image${busy === 1 ? "" : "s"} in progress`
              : items.length > 0
                ? "All images finished"
                : ""}
          </p>
          <ul class="cards">
            {items.map((item) => (
              <li key={item.id}>
                <Card
                  item={item}
                  maxUploadBytes={config.max_upload_bytes}
                  traceViewer={config.trace_viewer}
                  onRetry={retry}
                  onRemove={remove}
                />
              </li>
            ))}
          </ul>
        </main>
      </div>
      <footer class="bottom">
        <a href="/openapi.json">API (OpenAPI)</a> · <a href="/readyz">Readiness</a>
      </footer>
    </>
  );
}
