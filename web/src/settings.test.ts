import { describe, expect, it } from "vitest";
import type { OptionSchema } from "./config";
import { accepts, defaults, restore, save, toFields } from "./settings";

// A part of what GET /ui/config.json says (gateway/src/web.rs).
const OPTIONS: Record<string, OptionSchema> = {
  wm_text: { type: "string", maxLength: 200, default: "NWS Watermark" },
  wm_position: { type: "string", enum: ["bottom-right", "top-left", "center"], default: "bottom-right" },
  wm_opacity: { type: "number", exclusiveMinimum: 0, maximum: 1, default: 0.5 },
  wm_color: { type: "string", pattern: "^#?([0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})$" },
  wm_tiled: { type: "boolean", default: false },
  format: { type: "string", enum: ["auto", "jpeg", "webp"], default: "auto" },
  quality: { type: "integer", minimum: 1, maximum: 100, default: 85 },
  max_width: { type: "integer", minimum: 1, maximum: 8192, default: 1920 },
};

function memoryStorage(): Storage {
  const map = new Map<string, string>();
  return {
    getItem: (k) => map.get(k) ?? null,
    setItem: (k, v) => void map.set(k, v),
    removeItem: (k) => void map.delete(k),
    clear: () => map.clear(),
    key: (i) => [...map.keys()][i] ?? null,
    get length() {
      return map.size;
    },
  };
}

describe("settings", () => {
  it("start from the server's defaults", () => {
    const d = defaults(OPTIONS);
    expect(d.text).toBe("NWS Watermark");
    expect(d.quality).toBe(85);
    expect(d.maxWidth).toBe(1920);
    expect(d.colorOverride).toBe(false);
  });

  it("send only what differs from the defaults, the colour only when fixed", () => {
    const d = defaults(OPTIONS);
    expect(toFields(d, OPTIONS)).toEqual([]);
    const changed = { ...d, position: "top-left", quality: 60, tiled: true, color: "#ff0000" };
    expect(toFields(changed, OPTIONS)).toEqual([
      ["wm_position", "top-left"],
      ["wm_tiled", "true"],
      ["quality", "60"],
    ]);
    expect(toFields({ ...changed, colorOverride: true }, OPTIONS)).toContainEqual(["wm_color", "#ff0000"]);
  });

  it("never send an option the server does not have", () => {
    const fields = toFields({ ...defaults(OPTIONS), font: "serif", animated: "keep", maxHeight: 99 }, OPTIONS);
    expect(fields.map(([name]) => name)).toEqual([]);
  });

  it("survive a visit, and values the server no longer takes fall back", () => {
    const storage = memoryStorage();
    save({ ...defaults(OPTIONS), text: "© Ada", position: "center", quality: 70 }, storage);
    expect(restore(OPTIONS, storage)).toMatchObject({ text: "© Ada", position: "center", quality: 70 });

    storage.setItem(
      "nws-watermark.settings.v1",
      JSON.stringify({ position: "nowhere", quality: 400, opacity: 0, text: 7 }),
    );
    const restored = restore(OPTIONS, storage);
    expect(restored).toMatchObject({ position: "bottom-right", quality: 85, opacity: 0.5, text: "NWS Watermark" });

    storage.setItem("nws-watermark.settings.v1", "{not json");
    expect(restore(OPTIONS, storage)).toEqual(defaults(OPTIONS));
  });

  it("check values as the server's schema says", () => {
    expect(accepts(OPTIONS.quality, 100)).toBe(true);
    expect(accepts(OPTIONS.quality, 100.5)).toBe(false);
    expect(accepts(OPTIONS.wm_opacity, 0)).toBe(false);
    expect(accepts(OPTIONS.wm_color, "#12345g")).toBe(false);
    expect(accepts(OPTIONS.wm_text, "x".repeat(201))).toBe(false);
    expect(accepts(undefined, 1)).toBe(false);
  });
});
