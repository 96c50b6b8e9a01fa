// Server-Timing, as the gateway writes it: one entry per step of the
// request, the optimizer's stages inside its `render` step, and `total`.

export interface TimingEntry {
  name: string;
  description: string;
  /** Milliseconds. */
  duration: number;
}

export interface Step {
  name: string;
  label: string;
  /** Milliseconds, as shown (rounded to 0.1 ms). */
  duration: number;
  /** The optimizer's own stages, inside `render`. */
  stages?: Step[];
}

export interface Pipeline {
  /** The steps in the order the gateway took them; with `other`, they add up to `total`. */
  steps: Step[];
  total: number;
  traceId?: string;
}

/** The optimizer's stages: part of `render`, not steps of their own. */
const STAGES = ["decode", "resize", "watermark", "encode"];

const LABELS: Record<string, string> = {
  upload: "Upload and store the original",
  l1: "Cache: memory",
  l2: "Cache: Redis",
  store: "Cache: storage",
  variant: "Cache: compact variant",
  wait: "Waited for an identical request",
  render: "Optimizer",
  decode: "Decode",
  resize: "Resize",
  watermark: "Watermark",
  encode: "Encode",
  queue: "Optimizer: waiting line, storage, transfer",
  other: "Gateway and network",
};

/** Parses a `Server-Timing` header value (RFC-style list of metrics with params). */
export function parseServerTiming(header: string | null): TimingEntry[] {
  if (!header) return [];
  const entries: TimingEntry[] = [];
  for (const metric of splitOutsideQuotes(header, ",")) {
    const [rawName, ...params] = splitOutsideQuotes(metric, ";");
    const name = rawName.trim();
    if (!name) continue;
    let description = "";
    let duration = NaN;
    for (const param of params) {
      const eq = param.indexOf("=");
      if (eq < 0) continue;
      const key = param.slice(0, eq).trim().toLowerCase();
      let value = param.slice(eq + 1).trim();
      if (value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1).replace(/\\(.)/g, "$1");
      if (key === "desc") description = value;
      if (key === "dur") duration = Number(value);
    }
    entries.push({ name, description, duration });
  }
  return entries;
}

function splitOutsideQuotes(text: string, separator: string): string[] {
  const parts: string[] = [];
  let current = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\\" && quoted) {
      current += c + (text[i + 1] ?? "");
      i++;
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (c === separator && !quoted) {
      parts.push(current);
      current = "";
    } else {
      current += c;
    }
  }
  parts.push(current);
  return parts;
}

/** Rounded to the 0.1 ms shown, so what is shown adds up. */
export function tenths(ms: number): number {
  return Math.round(ms * 10) / 10;
}

function step(name: string, duration: number, description = ""): Step {
  return { name, label: LABELS[name] ?? (description || name), duration: tenths(duration) };
}

/**
 * The request's steps from its entries: the gateway's steps in order,
 * the optimizer's stages inside `render` (with the rest of the call as
 * its own stage), and the time no step accounts for as `other`, so the
 * steps add up to `total` as shown.
 */
export function pipeline(entries: TimingEntry[]): Pipeline | undefined {
  const total = entries.find((e) => e.name === "total");
  if (!total || !Number.isFinite(total.duration)) return undefined;
  const traceId = entries.find((e) => e.name === "trace")?.description || undefined;
  const timed = entries.filter((e) => Number.isFinite(e.duration) && e.name !== "total" && e.name !== "trace");
  const stages = timed.filter((e) => STAGES.includes(e.name));
  const steps: Step[] = timed
    .filter((e) => !STAGES.includes(e.name))
    .map((e) => step(e.name, e.duration, e.description));
  const render = steps.find((s) => s.name === "render");
  if (render && stages.length > 0) {
    render.stages = stages.map((e) => step(e.name, e.duration, e.description));
    const inStages = render.stages.reduce((sum, s) => sum + s.duration, 0);
    const rest = tenths(render.duration - inStages);
    if (rest > 0) render.stages.push(step("queue", rest));
  } else if (!render && stages.length > 0) {
    // An optimizer that reports stages through a gateway without a
    // `render` step: the stages stand as steps.
    steps.push(...stages.map((e) => step(e.name, e.duration, e.description)));
  }
  const shownTotal = tenths(total.duration);
  const accounted = steps.reduce((sum, s) => sum + s.duration, 0);
  const other = tenths(shownTotal - accounted);
  if (other > 0) steps.push(step("other", other));
  return { steps, total: shownTotal, traceId };
}

/** "12.3 ms", "1.24 s". */
export function formatDuration(ms: number): string {
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${ms.toFixed(1)} ms`;
}

/** A queued job's render as a pipeline: the whole attempt, its stages inside. */
export function jobPipeline(timings: {
  render_us: number;
  decode_us: number;
  resize_us: number;
  watermark_us: number;
  encode_us: number;
}): Pipeline | undefined {
  const ms = (us: number) => us / 1000;
  return pipeline([
    { name: "render", description: "", duration: ms(timings.render_us) },
    { name: "decode", description: "", duration: ms(timings.decode_us) },
    { name: "resize", description: "", duration: ms(timings.resize_us) },
    { name: "watermark", description: "", duration: ms(timings.watermark_us) },
    { name: "encode", description: "", duration: ms(timings.encode_us) },
    { name: "total", description: "", duration: ms(timings.render_us) },
  ]);
}
