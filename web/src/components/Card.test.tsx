import { fireEvent, render, screen } from "@testing-library/preact";
import { describe, expect, it, vi } from "vitest";
import { ApiError } from "../api";
import { Card, downloadName, type Item } from "./Card";

function item(phase: Item["phase"]): Item {
  return { id: 7, file: new File(["hello"], "notes.txt", { type: "text/plain" }), originalUrl: "blob:x", phase };
}

describe("Card", () => {
  it("explains a refused file and offers a retry with the current settings", () => {
    const onRetry = vi.fn();
    render(
      <Card
        item={item({
          kind: "error",
          error: new ApiError(415, "INVALID_ARGUMENT", "the upload is not an image (text/plain)"),
          at: Date.now(),
        })}
        maxUploadBytes={1000}
        traceViewer={null}
        onRetry={onRetry}
        onRemove={() => {}}
      />,
    );
    const alert = screen.getByRole("alert");
    expect(alert.textContent).toContain("Not an image the server can read");
    expect(alert.textContent).toContain("text/plain");
    fireEvent.click(screen.getByText("Retry with the current settings"));
    expect(onRetry).toHaveBeenCalledWith(7);
  });

  it("holds the retry of a rate-limited upload until its wait is over", () => {
    render(
      <Card
        item={item({
          kind: "error",
          error: new ApiError(429, "RESOURCE_EXHAUSTED", "upload rate exceeded", 5),
          at: Date.now(),
        })}
        maxUploadBytes={1000}
        traceViewer={null}
        onRetry={() => {}}
        onRemove={() => {}}
      />,
    );
    const retry = screen.getByRole("button", { name: /Retry in \d s/ }) as HTMLButtonElement;
    expect(retry.disabled).toBe(true);
  });

  it("announces upload progress in a live region", () => {
    render(
      <Card
        item={item({ kind: "uploading", sent: 500, total: 1000 })}
        maxUploadBytes={1000}
        traceViewer={null}
        onRetry={() => {}}
        onRemove={() => {}}
      />,
    );
    const status = screen.getByRole("status");
    expect(status.getAttribute("aria-live")).toBe("polite");
    expect(status.textContent).toBe("Uploading: 500 B of 1.0 KB (50%)");
    expect((screen.getByRole("progressbar") as HTMLProgressElement).value).toBe(500);
  });

  it("names downloads after the file and the result's format", () => {
    expect(downloadName("IMG_0001.HEIC", "image/jpeg")).toBe("IMG_0001-watermarked.jpg");
    expect(downloadName("", "image/avif")).toBe("image-watermarked.avif");
  });
});
