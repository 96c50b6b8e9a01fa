// The watermark and output settings: what the form shows, what the browser
// keeps between visits, and the upload fields they become.

import type { OptionSchema } from "./config";

export interface Settings {
  text: string;
  position: string;
  opacity: number;
  size: number;
  font: string;
  rotate: number;
  tiled: boolean;
  /** Off: the ink adapts to the background. */
  colorOverride: boolean;
  color: string;
  format: string;
  quality: number;
  maxWidth: number;
  maxHeight: number;
  animated: string;
}

const STORAGE_KEY = "nws-watermark.settings.v1";

/** Which upload option each setting is. */
const FIELDS: Record<Exclude<keyof Settings, "colorOverride">, string> = {
  text: "wm_text",
  position: "wm_position",
  opacity: "wm_opacity",
  size: "wm_size",
  font: "wm_font",
  rotate: "wm_rotate",
  tiled: "wm_tiled",
  color: "wm_color",
  format: "format",
  quality: "quality",
  maxWidth: "max_width",
  maxHeight: "max_height",
  animated: "animated",
};

export type Options = Record<string, OptionSchema>;

/** The server's defaults, for the options it has; safe values otherwise. */
export function defaults(options: Options): Settings {
  const value = <T extends string | number | boolean>(name: string, fallback: T): T => {
    const d = options[name]?.default;
    return (typeof d === typeof fallback ? d : fallback) as T;
  };
  return {
    text: value("wm_text", "NWS"),
    position: value("wm_position", "bottom-right"),
    opacity: value("wm_opacity", 0.5),
    size: value("wm_size", 0.05),
    font: value("wm_font", "sans"),
    rotate: value("wm_rotate", 0),
    tiled: value("wm_tiled", false),
    colorOverride: false,
    color: "#ffffff",
    format: value("format", "auto"),
    quality: value("quality", 85),
    maxWidth: value("max_width", 1920),
    maxHeight: value("max_height", 1080),
    animated: value("animated", "first"),
  };
}

/** Whether a value is one the server would take for that option. */
export function accepts(schema: OptionSchema | undefined, value: unknown): boolean {
  if (!schema) return false;
  switch (schema.type) {
    case "boolean":
      return typeof value === "boolean";
    case "string":
      if (typeof value !== "string") return false;
      if (schema.enum && !schema.enum.includes(value)) return false;
      if (schema.maxLength !== undefined && [...value].length > schema.maxLength) return false;
      if (schema.pattern && !new RegExp(schema.pattern).test(value)) return false;
      return true;
    case "integer":
    case "number":
      if (typeof value !== "number" || !Number.isFinite(value)) return false;
      if (schema.type === "integer" && !Number.isInteger(value)) return false;
      if (schema.minimum !== undefined && value < schema.minimum) return false;
      if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) return false;
      if (schema.maximum !== undefined && value > schema.maximum) return false;
      return true;
  }
}

/**
 * The settings kept from an earlier visit, each checked against what the
 * server takes today: a value it no longer takes falls back to its default.
 */
export function restore(options: Options, storage: Storage | undefined = globalThis.localStorage): Settings {
  const base = defaults(options);
  let saved: Partial<Settings> = {};
  try {
    saved = JSON.parse(storage?.getItem(STORAGE_KEY) ?? "{}") ?? {};
  } catch {
    saved = {};
  }
  const restored: Settings = { ...base };
  for (const key of Object.keys(base) as (keyof Settings)[]) {
    const value = saved[key];
    if (value === undefined) continue;
    if (key === "colorOverride") {
      if (typeof value === "boolean") restored.colorOverride = value;
    } else if (accepts(options[FIELDS[key]], value)) {
      (restored as unknown as Record<string, unknown>)[key] = value;
    }
  }
  return restored;
}

export function save(settings: Settings, storage: Storage | undefined = globalThis.localStorage): void {
  try {
    storage?.setItem(STORAGE_KEY, JSON.stringify(settings));
  } catch {
    // Private browsing or a full store: the settings last this visit only.
  }
}

/**
 * The upload's option fields, in the order they go into the form (before
 * the image, so a bad value is refused before the image is stored). Only
 * options the server has, and only values that differ from its defaults.
 */
export function toFields(settings: Settings, options: Options): [string, string][] {
  const base = defaults(options);
  const fields: [string, string][] = [];
  for (const [key, name] of Object.entries(FIELDS) as [keyof typeof FIELDS, string][]) {
    if (!(name in options)) continue;
    if (key === "color") {
      if (settings.colorOverride) fields.push([name, settings.color]);
      continue;
    }
    const value = settings[key];
    if (value === base[key]) continue;
    fields.push([name, String(value)]);
  }
  return fields;
}
