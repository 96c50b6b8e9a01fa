import { describe, expect, it } from "vitest";
import { newTrace, traceLink } from "./trace";

describe("trace context", () => {
  it("writes a W3C traceparent, sampled, with fresh ids", () => {
    const a = newTrace();
    const b = newTrace();
    expect(a.header).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    expect(a.header).toBe(`00-${a.traceId}-${a.spanId}-01`);
    expect(a.traceId).not.toBe(b.traceId);
    expect(a.traceId).not.toMatch(/^0+$/);
  });

  it("links a trace only when a viewer is configured", () => {
    expect(traceLink("http://jaeger:16686/trace/{trace_id}", "abc")).toBe("http://jaeger:16686/trace/abc");
    expect(traceLink(null, "abc")).toBeUndefined();
  });
});
