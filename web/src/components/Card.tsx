// One dropped image: its progress, then the result next to the original,
// where the time went, and what to do with it; or why it failed.

import { useEffect, useState } from "preact/hooks";
import type { ApiError, Job, Result } from "../api";
import { explain } from "../errors";
import { formatBytes } from "../format";
import type { Pipeline } from "../timing";
import { Compare } from "./Compare";
import { PipelineView } from "./PipelineView";

export type Phase =
  | { kind: "waiting" }
  | { kind: "uploading"; sent: number; total: number }
  | { kind: "processing" }
  | { kind: "queued"; job: Job }
  | { kind: "done"; result: Result; url: string; queued: boolean; jobPipeline?: Pipeline }
  | { kind: "error"; error: ApiError; at: number };

export interface Item {
  id: number;
  file: File;
  originalUrl: string;
  phase: Phase;
}

export interface CardProps {
  item: Item;
  maxUploadBytes: number;
  traceViewer: string | null;
  onRetry: (id: number) => void;
  onRemove: (id: number) => void;
}

const JOB_WORDS: Record<Job["status"], string> = {
  queued: "Queued: the optimizer is unavailable, the job waits for it",
  processing: "Queued job: rendering",
  retrying: "Queued job: an attempt failed, retrying",
  done: "Queued job: done",
  failed: "Queued job: failed",
};

function statusText(phase: Phase): string {
  switch (phase.kind) {
    case "waiting":
      return "Waiting to upload";
    case "uploading": {
      const percent = phase.total > 0 ? Math.round((phase.sent / phase.total) * 100) : 0;
      return `Uploading: ${formatBytes(phase.sent)} of ${formatBytes(phase.total)} (${percent}%)`;
    }
    case "processing":
      return "Processing";
    case "queued":
      return JOB_WORDS[phase.job.status] + (phase.job.attempts ? ` (attempt ${phase.job.attempts})` : "");
    case "done":
      return phase.queued ? "Done (from the queued job)" : "Done";
    case "error":
      return `Failed: ${explain(phase.error).title}`;
  }
}

function useSecondsLeft(until: number | undefined): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (until === undefined || until <= now) return;
    const timer = setTimeout(() => setNow(Date.now()), Math.min(1000, until - now));
    return () => clearTimeout(timer);
  }, [until, now]);
  return until === undefined ? 0 : Math.max(0, Math.ceil((until - now) / 1000));
}

function useNaturalSize(url: string): { width: number; height: number } | undefined {
  const [size, setSize] = useState<{ width: number; height: number }>();
  useEffect(() => {
    if (!url) return;
    const image = new Image();
    image.onload = () => setSize({ width: image.naturalWidth, height: image.naturalHeight });
    image.src = url;
  }, [url]);
  return size;
}

export function Card({ item, maxUploadBytes, traceViewer, onRetry, onRemove }: CardProps) {
  const { phase, file } = item;
  const original = useNaturalSize(item.originalUrl);
  // A cached result comes without X-Image-Width/Height: the image says.
  const decoded = useNaturalSize(phase.kind === "done" ? phase.url : "");
  const explained = phase.kind === "error" ? explain(phase.error, maxUploadBytes) : undefined;
  const waitUntil =
    phase.kind === "error" && explained?.waitSeconds ? phase.at + explained.waitSeconds * 1000 : undefined;
  const secondsLeft = useSecondsLeft(waitUntil);
  const [copied, setCopied] = useState(false);
  const titleId = `card-${item.id}-title`;
  const link = phase.kind === "done" && phase.result.link ? new URL(phase.result.link, location.href).href : undefined;

  const copy = async () => {
    if (!link) return;
    try {
      await navigator.clipboard.writeText(link);
      setCopied(true);
    } catch {
      // No clipboard permission: the link is in the field, selected.
      (document.getElementById(`card-${item.id}-link`) as HTMLInputElement | null)?.select();
    }
  };

  return (
    <article class={`card card-${phase.kind}`} aria-labelledby={titleId} data-file={file.name}>
      <header class="card-head">
        <h3 id={titleId}>{file.name || "pasted image"}</h3>
        <button
          type="button"
          class="quiet"
          onClick={() => onRemove(item.id)}
          aria-label={`Remove ${file.name || "this image"}`}
        >
          ✕
        </button>
      </header>
      <p class="status" role="status" aria-live="polite">
        {statusText(phase)}
      </p>
      {phase.kind === "uploading" && (
        <progress max={phase.total || 1} value={phase.sent} aria-label={`Upload of ${file.name}`} />
      )}
      {(phase.kind === "processing" || phase.kind === "queued") && <progress aria-label={`Processing ${file.name}`} />}

      {phase.kind === "error" && explained && (
        <div class="error" role="alert">
          <p class="error-title">{explained.title}</p>
          <p class="error-detail">
            {explained.detail}{" "}
            <span class="code">
              ({phase.error.code}, HTTP {phase.error.status || "none"})
            </span>
          </p>
          {explained.retryable && (
            <button type="button" onClick={() => onRetry(item.id)} disabled={secondsLeft > 0}>
              {secondsLeft > 0 ? `Retry in ${secondsLeft} s` : "Retry"}
            </button>
          )}
          {!explained.retryable && <p class="hint">Change the settings or the file, then retry.</p>}
          {!explained.retryable && (
            <button type="button" onClick={() => onRetry(item.id)}>
              Retry with the current settings
            </button>
          )}
        </div>
      )}

      {phase.kind === "done" && (
        <>
          <Compare
            before={item.originalUrl}
            after={phase.url}
            width={phase.result.width ?? decoded?.width}
            height={phase.result.height ?? decoded?.height}
            beforeLabel={`Original: ${file.name}`}
            afterLabel={`Watermarked: ${file.name}`}
          />
          <dl class="sizes">
            <div>
              <dt>Original</dt>
              <dd data-role="original-size">
                {original ? `${original.width}×${original.height}` : "size unknown to the browser"},{" "}
                {formatBytes(file.size)}
              </dd>
            </div>
            <div>
              <dt>Result</dt>
              <dd data-role="result-size">
                {resultSize(phase.result.width ?? decoded?.width, phase.result.height ?? decoded?.height)}
                {phase.result.frames ? `, ${phase.result.frames} frames` : ""}, {formatBytes(phase.result.bytes)},{" "}
                {phase.result.type}
              </dd>
            </div>
          </dl>
          {phase.jobPipeline && (
            <PipelineView pipeline={phase.jobPipeline} label="The queued job's render" traceViewer={traceViewer} />
          )}
          {phase.result.pipeline && (
            <PipelineView
              pipeline={phase.result.pipeline}
              cache={phase.result.cache}
              traceId={phase.result.traceId}
              traceViewer={traceViewer}
              label={phase.queued ? "Fetching its result" : undefined}
            />
          )}
          <div class="actions">
            <a class="button" href={phase.url} download={downloadName(file.name, phase.result.type)}>
              Download
            </a>
            {link && (
              <>
                <label class="visually-hidden" for={`card-${item.id}-link`}>
                  Result link
                </label>
                <input
                  id={`card-${item.id}-link`}
                  class="link"
                  readOnly
                  value={link}
                  onFocus={(e) => (e.currentTarget as HTMLInputElement).select()}
                />
                <button type="button" onClick={copy}>
                  {copied ? "Copied" : "Copy link"}
                </button>
              </>
            )}
          </div>
        </>
      )}
    </article>
  );
}

function resultSize(width?: number, height?: number): string {
  return width && height ? `${width}×${height}` : "size unknown";
}

const EXTENSIONS: Record<string, string> = {
  "image/jpeg": "jpg",
  "image/png": "png",
  "image/webp": "webp",
  "image/avif": "avif",
};

export function downloadName(name: string, type: string): string {
  const stem = (name || "image").replace(/\.[^.]*$/, "");
  return `${stem}-watermarked.${EXTENSIONS[type] ?? "img"}`;
}
