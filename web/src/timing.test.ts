import { describe, expect, it } from "vitest";
import { formatDuration, jobPipeline, parseServerTiming, pipeline } from "./timing";

// As the gateway writes it (gateway/src/timing.rs) for a rendered upload.
const RENDERED =
  'trace;desc="4bf92f3577b34da6a3ce929d0e0e4736", upload;desc="gateway: read and store the original";dur=3.214, ' +
  'l1;desc="cache: memory";dur=0.004, l2;desc="cache: redis";dur=0.311, store;desc="cache: storage";dur=0.902, ' +
  'render;desc="optimizer: the whole Render call";dur=41.377, decode;desc="optimizer: decode";dur=20.100, ' +
  'resize;desc="optimizer: resize";dur=6.050, watermark;desc="optimizer: watermark";dur=0.480, ' +
  'encode;desc="optimizer: encode";dur=9.333, total;desc="gateway: whole request";dur=47.120';

const sum = (values: number[]) => Math.round(values.reduce((a, b) => a + b, 0) * 10) / 10;

describe("Server-Timing", () => {
  it("parses names, descriptions and durations, quoted commas included", () => {
    const entries = parseServerTiming('a;desc="x, y; z";dur=1.5, b;dur=2, c');
    expect(entries.map((e) => e.name)).toEqual(["a", "b", "c"]);
    expect(entries[0]).toEqual({ name: "a", description: "x, y; z", duration: 1.5 });
    expect(entries[1].duration).toBe(2);
    expect(Number.isNaN(entries[2].duration)).toBe(true);
    expect(parseServerTiming(null)).toEqual([]);
  });

  it("makes steps that add up to the total as shown, stages inside render", () => {
    const result = pipeline(parseServerTiming(RENDERED))!;
    expect(result.traceId).toBe("4bf92f3577b34da6a3ce929d0e0e4736");
    expect(result.steps.map((s) => s.name)).toEqual(["upload", "l1", "l2", "store", "render", "other"]);
    expect(result.total).toBe(47.1);
    expect(sum(result.steps.map((s) => s.duration))).toBe(result.total);
    const render = result.steps.find((s) => s.name === "render")!;
    expect(render.stages!.map((s) => s.name)).toEqual(["decode", "resize", "watermark", "encode", "queue"]);
    expect(sum(render.stages!.map((s) => s.duration))).toBe(render.duration);
  });

  it("shows a cache hit as its lookups and the rest", () => {
    const result = pipeline(
      parseServerTiming('l1;desc="cache: memory";dur=0.012, total;desc="gateway: whole request";dur=0.190'),
    )!;
    expect(result.steps.map((s) => [s.name, s.duration])).toEqual([
      ["l1", 0],
      ["other", 0.2],
    ]);
    expect(result.total).toBe(0.2);
  });

  it("shows a queued job's render with its stages and the rest of the attempt", () => {
    const job = jobPipeline({
      render_us: 180_400,
      decode_us: 60_000,
      resize_us: 20_000,
      watermark_us: 500,
      encode_us: 9_000,
    })!;
    expect(job.total).toBe(180.4);
    expect(job.steps.map((s) => s.name)).toEqual(["render"]);
    expect(job.steps[0].stages!.map((s) => [s.name, s.duration])).toEqual([
      ["decode", 60],
      ["resize", 20],
      ["watermark", 0.5],
      ["encode", 9],
      ["queue", 90.9],
    ]);
  });

  it("has no pipeline without a total", () => {
    expect(pipeline(parseServerTiming("l1;dur=1"))).toBeUndefined();
  });

  it("formats milliseconds and seconds", () => {
    expect(formatDuration(12.34)).toBe("12.3 ms");
    expect(formatDuration(1240)).toBe("1.24 s");
  });
});
