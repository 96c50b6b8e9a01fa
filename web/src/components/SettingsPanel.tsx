// The watermark and output settings. Choices, ranges and defaults come
// from the gateway (GET /ui/config.json), so the form offers what the
// server takes and nothing else.

import type { OptionSchema } from "../config";
import type { Settings } from "../settings";

export interface SettingsPanelProps {
  settings: Settings;
  options: Record<string, OptionSchema>;
  onChange: (next: Settings) => void;
  logo?: File;
  onLogo: (logo: File | undefined) => void;
  onReset: () => void;
  /** The latest image rendered (a blob: URL of its original): the position grid shows it. */
  preview?: string;
  /** Open at first; closed on a phone, so the drop zone is on the first screen. */
  initiallyOpen?: boolean;
}

/** The position grid's backdrop (as in style.css), under the image. */
const BACKDROP = "linear-gradient(160deg, #7ea6c9, #3f6b4d)";

/** The anchors as a 3×3 grid, reading order. */
const GRID = ["top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right"];

const POSITION_WORDS: Record<string, string> = {
  "top-left": "Top left",
  top: "Top",
  "top-right": "Top right",
  left: "Left",
  center: "Center",
  right: "Right",
  "bottom-left": "Bottom left",
  bottom: "Bottom",
  "bottom-right": "Bottom right",
};

const FORMAT_WORDS: Record<string, string> = {
  auto: "Auto (what the browser takes)",
  jpeg: "JPEG",
  webp: "WebP",
  avif: "AVIF",
  png: "PNG (lossless)",
};

function range(schema: OptionSchema | undefined, fallback: [number, number]): { min: number; max: number } {
  return {
    min: schema?.minimum ?? schema?.exclusiveMinimum ?? fallback[0],
    max: schema?.maximum ?? fallback[1],
  };
}

export function SettingsPanel({
  settings,
  options,
  onChange,
  logo,
  onLogo,
  onReset,
  initiallyOpen = true,
  preview,
}: SettingsPanelProps) {
  const set = <K extends keyof Settings>(key: K, value: Settings[K]) => onChange({ ...settings, [key]: value });
  const num = (value: string, fallback: number) =>
    value.trim() === "" || !Number.isFinite(Number(value)) ? fallback : Number(value);
  const positions = GRID.filter((p) => options.wm_position?.enum?.includes(p) ?? true);
  const formats = options.format?.enum ?? ["auto", "jpeg", "webp", "avif", "png"];
  const fonts = options.wm_font?.enum ?? ["sans"];
  const quality = range(options.quality, [1, 100]);
  const maxText = options.wm_text?.maxLength ?? 200;

  return (
    <details class="settings" open={initiallyOpen}>
      <summary>
        <h2 id="settings-title">Settings</h2>
      </summary>
      <form aria-labelledby="settings-title" onSubmit={(e) => e.preventDefault()}>
        <p class="hint">Kept in this browser for your next visit.</p>
        <fieldset>
          <legend>Watermark</legend>
          <label for="wm-text">Text</label>
          <input
            id="wm-text"
            type="text"
            maxLength={maxText}
            value={settings.text}
            onInput={(e) => set("text", e.currentTarget.value)}
          />

          <fieldset class="positions">
            <legend>Position</legend>
            <div
              class={`position-grid${preview ? " with-preview" : ""}`}
              // Over the plain backdrop, which stays when the browser cannot show the image (HEIC…).
              style={preview ? { backgroundImage: `url("${preview}"), ${BACKDROP}` } : undefined}
            >
              {positions.map((p) => (
                <label key={p} class={`position position-${p}`} title={POSITION_WORDS[p] ?? p}>
                  <input
                    type="radio"
                    name="wm-position"
                    value={p}
                    checked={settings.position === p}
                    onChange={() => set("position", p)}
                  />
                  <span class="visually-hidden">{POSITION_WORDS[p] ?? p}</span>
                  <span class="mark" aria-hidden="true" />
                </label>
              ))}
            </div>
          </fieldset>

          <label for="wm-opacity">Opacity</label>
          <output class="value" aria-hidden="true">
            {Math.round(settings.opacity * 100)}%
          </output>
          <input
            id="wm-opacity"
            aria-valuetext={`${Math.round(settings.opacity * 100)}%`}
            type="range"
            min={0.05}
            max={1}
            step={0.05}
            value={settings.opacity}
            onInput={(e) => set("opacity", num(e.currentTarget.value, settings.opacity))}
          />

          <label for="wm-size">Text size</label>
          <output class="value" aria-hidden="true">
            {Math.round(settings.size * 1000) / 10}% of the height
          </output>
          <input
            id="wm-size"
            aria-valuetext={`${Math.round(settings.size * 1000) / 10}% of the height`}
            type="range"
            min={0.01}
            max={options.wm_size?.maximum ?? 0.5}
            step={0.005}
            value={settings.size}
            onInput={(e) => set("size", num(e.currentTarget.value, settings.size))}
          />

          <label for="wm-font">Font</label>
          <select id="wm-font" value={settings.font} onChange={(e) => set("font", e.currentTarget.value)}>
            {fonts.map((f) => (
              <option key={f} value={f}>
                {f}
              </option>
            ))}
          </select>

          <label for="wm-rotate">Rotation (degrees, clockwise)</label>
          <input
            id="wm-rotate"
            type="number"
            min={-360}
            max={360}
            step={1}
            value={settings.rotate}
            onInput={(e) => set("rotate", num(e.currentTarget.value, 0))}
          />

          <label class="check">
            <input type="checkbox" checked={settings.tiled} onChange={(e) => set("tiled", e.currentTarget.checked)} />{" "}
            Tile across the image
          </label>

          <label class="check">
            <input
              type="checkbox"
              checked={settings.colorOverride}
              onChange={(e) => set("colorOverride", e.currentTarget.checked)}
            />{" "}
            Fixed colour (otherwise the ink adapts to the background)
          </label>
          {settings.colorOverride && (
            <>
              <label for="wm-color">Colour</label>
              <input
                id="wm-color"
                type="color"
                value={settings.color}
                onInput={(e) => set("color", e.currentTarget.value)}
              />
            </>
          )}

          <label for="wm-logo">Logo (optional; this visit only)</label>
          <input
            id="wm-logo"
            type="file"
            accept="image/png,image/webp,image/jpeg,image/gif"
            onChange={(e) => onLogo(e.currentTarget.files?.[0])}
          />
          {logo && (
            <p class="hint">
              {logo.name}{" "}
              <button type="button" class="quiet" onClick={() => onLogo(undefined)}>
                Remove the logo
              </button>
            </p>
          )}
        </fieldset>

        <fieldset>
          <legend>Output</legend>
          <label for="format">Format</label>
          <select id="format" value={settings.format} onChange={(e) => set("format", e.currentTarget.value)}>
            {formats.map((f) => (
              <option key={f} value={f}>
                {FORMAT_WORDS[f] ?? f}
              </option>
            ))}
          </select>

          <label for="quality">Quality</label>
          <output class="value" aria-hidden="true">
            {settings.quality}
          </output>
          <input
            id="quality"
            type="range"
            min={quality.min}
            max={quality.max}
            step={1}
            value={settings.quality}
            disabled={settings.format === "png"}
            onInput={(e) => set("quality", num(e.currentTarget.value, settings.quality))}
          />

          <div class="pair">
            <BoxSide
              id="max-width"
              label="Max width"
              value={settings.maxWidth}
              schema={options.max_width}
              onValue={(side) => set("maxWidth", side)}
            />
            <BoxSide
              id="max-height"
              label="Max height"
              value={settings.maxHeight}
              schema={options.max_height}
              onValue={(side) => set("maxHeight", side)}
            />
          </div>

          {options.animated && (
            <label class="check">
              <input
                type="checkbox"
                checked={settings.animated === "keep"}
                onChange={(e) => set("animated", e.currentTarget.checked ? "keep" : "first")}
              />{" "}
              Keep animations (animated WebP)
            </label>
          )}
        </fieldset>
        <button type="button" class="quiet" onClick={onReset}>
          Reset to the server's defaults
        </button>
      </form>
    </details>
  );
}

/** One side of the box the image is fitted into, in whole pixels. */
function BoxSide(props: {
  id: string;
  label: string;
  value: number;
  schema: OptionSchema | undefined;
  onValue: (side: number) => void;
}) {
  const { min, max } = range(props.schema, [1, 8192]);
  return (
    <div>
      <label for={props.id}>{props.label}</label>
      <input
        id={props.id}
        type="number"
        min={min}
        max={max}
        value={props.value}
        onInput={(e) => {
          const typed = e.currentTarget.value.trim();
          if (typed !== "" && Number.isFinite(Number(typed))) props.onValue(Math.round(Number(typed)));
        }}
      />
    </div>
  );
}
