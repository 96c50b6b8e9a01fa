// The gateway's HTTP API as the page uses it: uploads with progress, the
// result's headers, errors as the API words them, and queued jobs followed
// over Server-Sent Events.

import { newTrace } from "./trace";
import { parseServerTiming, pipeline, type Pipeline } from "./timing";

/** What the page asks for when `format=auto`: the formats it can show, best first. */
export const ACCEPT_IMAGES = "image/avif,image/webp,image/png,image/jpeg;q=0.9,*/*;q=0.5";

export interface Result {
  blob: Blob;
  type: string;
  bytes: number;
  width?: number;
  height?: number;
  frames?: number;
  /** X-Cache: HIT-L1, HIT-L2, HIT-STORE, MISS, COALESCED. */
  cache?: string;
  pipeline?: Pipeline;
  traceId?: string;
  /** The result's own link (signed when the gateway signs links). */
  link?: string;
  originalSha256?: string;
}

export interface Job {
  id: string;
  status: "queued" | "processing" | "retrying" | "done" | "failed";
  attempts?: number;
  events: string;
  location: string;
  result?: string;
  error?: string;
  error_code?: string;
  retry_at?: string;
  /** What the attempt that rendered it took, in µs (when it rendered it). */
  timings?: JobTimings;
}

export interface JobTimings {
  render_us: number;
  decode_us: number;
  resize_us: number;
  watermark_us: number;
  encode_us: number;
}

/** A refusal or failure, as the API described it. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** Seconds, from Retry-After. */
    readonly retryAfter?: number,
    readonly traceId?: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export type Outcome = { kind: "result"; result: Result } | { kind: "job"; job: Job; traceId?: string };

export interface UploadRequest {
  file: Blob & { name?: string };
  fields: [string, string][];
  logo?: File;
  token?: string;
  onProgress?: (sent: number, total: number) => void;
  /** The body is sent; the server is working. */
  onSent?: () => void;
  signal?: AbortSignal;
}

type HeaderSource = { get(name: string): string | null };

function number(value: string | null): number | undefined {
  if (value === null || value === "") return undefined;
  const n = Number(value);
  return Number.isFinite(n) ? n : undefined;
}

function resultFrom(blob: Blob, headers: HeaderSource): Result {
  const timing = pipeline(parseServerTiming(headers.get("server-timing")));
  return {
    blob,
    type: headers.get("content-type") ?? blob.type,
    bytes: blob.size,
    width: number(headers.get("x-image-width")),
    height: number(headers.get("x-image-height")),
    frames: number(headers.get("x-image-frames")),
    cache: headers.get("x-cache") ?? undefined,
    pipeline: timing,
    traceId: headers.get("x-trace-id") ?? timing?.traceId,
    link: headers.get("content-location") ?? undefined,
    originalSha256: headers.get("x-original-sha256") ?? undefined,
  };
}

/** Seconds from a Retry-After of seconds or an HTTP date. */
export function retryAfterSeconds(value: string | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, Math.ceil(seconds));
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - now) / 1000));
}

async function errorFrom(status: number, body: Blob | string | null, headers: HeaderSource): Promise<ApiError> {
  let code = "UNKNOWN";
  let message = status === 0 ? "the gateway could not be reached" : `HTTP ${status}`;
  try {
    const text = typeof body === "string" ? body : body ? await body.text() : "";
    const json = JSON.parse(text) as { code?: string; message?: string };
    if (json.code) code = json.code;
    if (json.message) message = json.message;
  } catch {
    // Not the API's JSON (a proxy's page, a network error): the status says it.
  }
  return new ApiError(
    status,
    code,
    message,
    retryAfterSeconds(headers.get("retry-after")),
    headers.get("x-trace-id") ?? undefined,
  );
}

/** Header access on a finished XMLHttpRequest. */
function xhrHeaders(xhr: XMLHttpRequest): HeaderSource {
  return { get: (name) => xhr.getResponseHeader(name) };
}

/**
 * POST /v1/watermark as a form: the options first, then the mark image,
 * then the photo. XMLHttpRequest, not fetch: only it reports the bytes
 * sent while uploading.
 */
export function upload(request: UploadRequest): Promise<Outcome> {
  const form = new FormData();
  for (const [name, value] of request.fields) form.append(name, value);
  if (request.logo) form.append("wm_image", request.logo, request.logo.name);
  form.append("image", request.file, request.file.name ?? "image");
  const trace = newTrace();
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/watermark");
    xhr.responseType = "blob";
    xhr.setRequestHeader("accept", ACCEPT_IMAGES);
    xhr.setRequestHeader("traceparent", trace.header);
    if (request.token) xhr.setRequestHeader("authorization", `Bearer ${request.token}`);
    xhr.upload.onprogress = (event) =>
      request.onProgress?.(event.loaded, event.lengthComputable ? event.total : request.file.size);
    xhr.upload.onload = () => request.onSent?.();
    xhr.onload = async () => {
      const headers = xhrHeaders(xhr);
      const body = xhr.response as Blob | null;
      if (xhr.status === 200 && body) {
        resolve({ kind: "result", result: resultFrom(body, headers) });
      } else if (xhr.status === 202 && body) {
        const job = JSON.parse(await body.text()) as Job;
        resolve({ kind: "job", job, traceId: headers.get("x-trace-id") ?? trace.traceId });
      } else {
        reject(await errorFrom(xhr.status, body, headers));
      }
    };
    xhr.onerror = () =>
      reject(new ApiError(0, "UNAVAILABLE", "the upload could not reach the gateway (network error)"));
    xhr.ontimeout = () => reject(new ApiError(0, "DEADLINE_EXCEEDED", "the upload timed out"));
    xhr.onabort = () => reject(new ApiError(0, "CANCELLED", "the upload was cancelled"));
    request.signal?.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.send(form);
  });
}

function authorization(token?: string): Record<string, string> {
  return token ? { authorization: `Bearer ${token}` } : {};
}

/** GET a result by its link (a job's `result`). */
export async function fetchResult(link: string, token?: string, signal?: AbortSignal): Promise<Result> {
  const response = await fetch(link, { headers: { accept: ACCEPT_IMAGES, ...authorization(token) }, signal });
  if (!response.ok) throw await errorFrom(response.status, await response.text(), response.headers);
  const result = resultFrom(await response.blob(), response.headers);
  return { ...result, link: result.link ?? link };
}

export interface JobWatch {
  onChange: (job: Job) => void;
  signal: AbortSignal;
  token?: string;
  /** How often the job is polled when its event stream cannot be used. */
  pollMs?: number;
}

/**
 * Follows a job until it is done or failed: over its event stream
 * (EventSource resumes with Last-Event-ID by itself), or, when the stream
 * cannot be opened (a token is needed and the link is not signed), by
 * polling its status.
 */
export function followJob(job: Job, watch: JobWatch): Promise<Job> {
  return new Promise((resolve, reject) => {
    let finished = false;
    let source: EventSource | undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const finish = (final: Job | ApiError) => {
      if (finished) return;
      finished = true;
      source?.close();
      if (timer) clearTimeout(timer);
      if (final instanceof ApiError) reject(final);
      else resolve(final);
    };
    const seen = (next: Job) => {
      watch.onChange(next);
      if (next.status === "done" || next.status === "failed") finish(next);
    };
    watch.signal.addEventListener("abort", () => finish(new ApiError(0, "CANCELLED", "stopped following the job")), {
      once: true,
    });
    const poll = async () => {
      if (finished) return;
      try {
        const response = await fetch(job.location, {
          headers: { accept: "application/json", ...authorization(watch.token) },
          signal: watch.signal,
        });
        // 404 while no status is known yet: keep looking.
        if (response.ok) seen((await response.json()) as Job);
        else if (response.status !== 404)
          return finish(await errorFrom(response.status, await response.text(), response.headers));
      } catch {
        // A dropped connection: the next poll tries again.
      }
      if (!finished) timer = setTimeout(poll, watch.pollMs ?? 2000);
    };
    let opened = false;
    if (typeof EventSource === "function" && !(watch.token && !job.events.includes("sig="))) {
      source = new EventSource(job.events);
      source.onopen = () => (opened = true);
      source.onmessage = (event) => {
        try {
          seen(JSON.parse(event.data) as Job);
        } catch {
          // Not a job record: ignored.
        }
      };
      source.onerror = () => {
        // Never opened (refused): poll instead. Once open, EventSource
        // reconnects by itself.
        if (!opened && !finished) {
          source?.close();
          source = undefined;
          void poll();
        }
      };
    } else {
      void poll();
    }
  });
}
