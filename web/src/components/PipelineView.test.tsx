import { render, screen } from "@testing-library/preact";
import { describe, expect, it } from "vitest";
import { parseServerTiming, pipeline } from "../timing";
import { PipelineView } from "./PipelineView";

const HEADER =
  'upload;desc="gateway: read and store the original";dur=2.5, l1;desc="cache: memory";dur=0.01, ' +
  'render;desc="optimizer: the whole Render call";dur=30.04, decode;desc="optimizer: decode";dur=12.0, ' +
  'resize;desc="optimizer: resize";dur=5.0, watermark;desc="optimizer: watermark";dur=0.5, ' +
  'encode;desc="optimizer: encode";dur=8.0, total;desc="gateway: whole request";dur=33.333';

describe("PipelineView", () => {
  it("shows every step with its time, and they add up to the total shown", () => {
    const { container } = render(<PipelineView pipeline={pipeline(parseServerTiming(HEADER))!} cache="MISS" />);
    const rows = [...container.querySelectorAll("tbody tr[data-step] td")].map((td) =>
      Number(td.getAttribute("data-ms")),
    );
    const total = Number(container.querySelector("tfoot td")!.getAttribute("data-ms"));
    expect(total).toBe(33.3);
    expect(Math.round(rows.reduce((a, b) => a + b, 0) * 10) / 10).toBe(total);
    for (const label of [
      "Upload and store the original",
      "Cache: memory",
      "Optimizer",
      "Decode",
      "Resize",
      "Watermark",
      "Encode",
      "Gateway and network",
    ]) {
      expect(screen.getByText(label)).toBeTruthy();
    }
    expect(screen.getByText(/rendered now/)).toBeTruthy();
  });

  it("links the trace id when a viewer is configured", () => {
    const result = pipeline(parseServerTiming(HEADER))!;
    render(<PipelineView pipeline={result} traceId="abc123" traceViewer="http://localhost:16686/trace/{trace_id}" />);
    const link = screen.getByRole("link");
    expect(link.getAttribute("href")).toBe("http://localhost:16686/trace/abc123");
  });
});
