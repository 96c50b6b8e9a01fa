import { fireEvent, render, screen } from "@testing-library/preact";
import { describe, expect, it, vi } from "vitest";
import { defaults } from "../settings";
import { SettingsPanel, type SettingsPanelProps } from "./SettingsPanel";

const POSITIONS = ["bottom-right", "bottom-left", "top-right", "top-left", "center", "top", "bottom", "left", "right"];
const OPTIONS = {
  wm_position: { type: "string" as const, enum: POSITIONS, default: "bottom-right" },
  format: { type: "string" as const, enum: ["auto", "avif", "webp", "jpeg", "png"], default: "auto" },
  quality: { type: "integer" as const, minimum: 1, maximum: 100, default: 85 },
};

/** The panel at the server's defaults, with `props` over them. */
function renderPanel(props: Partial<SettingsPanelProps> = {}) {
  return render(
    <SettingsPanel
      settings={defaults(OPTIONS)}
      options={OPTIONS}
      onChange={() => {}}
      onLogo={() => {}}
      onReset={() => {}}
      {...props}
    />,
  );
}

describe("SettingsPanel", () => {
  it("offers every anchor the server has on a grid, and picks one", () => {
    const onChange = vi.fn();
    renderPanel({ onChange });
    const radios = screen.getAllByRole("radio") as HTMLInputElement[];
    expect(radios.map((r) => r.value)).toEqual([
      "top-left",
      "top",
      "top-right",
      "left",
      "center",
      "right",
      "bottom-left",
      "bottom",
      "bottom-right",
    ]);
    expect(radios.find((r) => r.checked)!.value).toBe("bottom-right");
    fireEvent.click(screen.getByLabelText("Top left"));
    expect(onChange).toHaveBeenCalledWith(expect.objectContaining({ position: "top-left" }));
  });

  it("lays the anchors over the latest image dropped", () => {
    const { container } = renderPanel({ preview: "blob:http://localhost/photo" });
    const grid = container.querySelector(".position-grid") as HTMLElement;
    expect(grid.style.backgroundImage).toContain("blob:http://localhost/photo");
  });

  it("offers the formats the server has, and labels every control", () => {
    renderPanel();
    const format = screen.getByLabelText("Format") as HTMLSelectElement;
    expect([...format.options].map((o) => o.value)).toEqual(["auto", "avif", "webp", "jpeg", "png"]);
    for (const label of ["Text", /Opacity/, /Quality/, "Max width", "Max height", /Logo/]) {
      expect(screen.getByLabelText(label)).toBeTruthy();
    }
  });
});
