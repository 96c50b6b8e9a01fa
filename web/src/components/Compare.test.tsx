import { fireEvent, render, screen } from "@testing-library/preact";
import { describe, expect, it } from "vitest";
import { Compare } from "./Compare";

function slider() {
  return screen.getByRole("slider");
}

describe("Compare", () => {
  it("moves with arrows, Page keys, Home and End, and cuts the original there", () => {
    render(
      <Compare
        before="blob:a"
        after="blob:b"
        width={1920}
        height={1080}
        beforeLabel="Original: a.jpg"
        afterLabel="Watermarked: a.jpg"
      />,
    );
    const handle = slider();
    const original = screen.getByAltText("Original: a.jpg") as HTMLImageElement;
    expect(handle.getAttribute("aria-valuenow")).toBe("50");
    fireEvent.keyDown(handle, { key: "ArrowRight" });
    fireEvent.keyDown(handle, { key: "ArrowRight" });
    expect(handle.getAttribute("aria-valuenow")).toBe("52");
    expect(original.style.clipPath).toBe("inset(0 48% 0 0)");
    fireEvent.keyDown(handle, { key: "PageDown" });
    expect(handle.getAttribute("aria-valuenow")).toBe("42");
    fireEvent.keyDown(handle, { key: "Home" });
    expect(handle.getAttribute("aria-valuenow")).toBe("0");
    fireEvent.keyDown(handle, { key: "ArrowLeft" });
    expect(handle.getAttribute("aria-valuenow")).toBe("0");
    fireEvent.keyDown(handle, { key: "End" });
    expect(handle.getAttribute("aria-valuenow")).toBe("100");
    expect(handle.getAttribute("aria-valuetext")).toBe("100% original, 0% watermarked");
    expect(original.style.clipPath).toBe("inset(0 0% 0 0)");
  });

  it("is a focusable slider with a name", () => {
    render(<Compare before="blob:a" after="blob:b" beforeLabel="o" afterLabel="w" />);
    const handle = slider();
    expect(handle.tabIndex).toBe(0);
    expect(handle.getAttribute("aria-label")).toMatch(/before and after/i);
  });
});

describe("Compare with an original the browser cannot show", () => {
  it("shows the result alone, and says why", () => {
    render(
      <Compare before="blob:heic" after="blob:b" beforeLabel="Original: a.heic" afterLabel="Watermarked: a.heic" />,
    );
    fireEvent.error(screen.getByAltText("Original: a.heic"));
    expect(screen.queryByRole("slider")).toBeNull();
    expect(screen.getByAltText("Watermarked: a.heic")).toBeTruthy();
    expect(screen.getByText(/cannot show the original's format/)).toBeTruthy();
  });
});
