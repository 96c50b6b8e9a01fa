// W3C trace context: the page starts each upload's trace, so the gateway's
// spans (and every service's after it) join a trace the browser named.

function randomHex(bytes: number): string {
  const buffer = new Uint8Array(bytes);
  // An all-zero id is invalid; with 8 or 16 random bytes it will not come.
  do crypto.getRandomValues(buffer);
  while (buffer.every((b) => b === 0));
  return Array.from(buffer, (b) => b.toString(16).padStart(2, "0")).join("");
}

export interface TraceContext {
  traceId: string;
  spanId: string;
  /** The `traceparent` header: version 00, sampled. */
  header: string;
}

export function newTrace(): TraceContext {
  const traceId = randomHex(16);
  const spanId = randomHex(8);
  return { traceId, spanId, header: `00-${traceId}-${spanId}-01` };
}

/** The link to a trace, from a template holding `{trace_id}`. */
export function traceLink(template: string | null | undefined, traceId: string): string | undefined {
  if (!template || !traceId) return undefined;
  return template.split("{trace_id}").join(encodeURIComponent(traceId));
}
