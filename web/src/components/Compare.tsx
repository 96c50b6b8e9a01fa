// The before/after slider: the result underneath, the original over it
// cut at the handle. A slider to assistive technology; arrows, Page keys,
// Home and End move it, and so do a mouse, a pen and a finger.

import { useRef, useState } from "preact/hooks";

export interface CompareProps {
  before: string;
  after: string;
  /** Shown width and height (the result's); the original is fitted to it. */
  width?: number;
  height?: number;
  beforeLabel: string;
  afterLabel: string;
  initial?: number;
}

const STEP = 1;
const PAGE = 10;

export function clampPercent(value: number): number {
  return Math.min(100, Math.max(0, Math.round(value * 10) / 10));
}

export function Compare({ before, after, width, height, beforeLabel, afterLabel, initial = 50 }: CompareProps) {
  const [position, setPosition] = useState(clampPercent(initial));
  // HEIC, TIFF, JPEG XL…: formats the server reads and browsers may not.
  const [beforeUnreadable, setBeforeUnreadable] = useState(false);
  const frame = useRef<HTMLDivElement>(null);
  const dragging = useRef(false);

  const moveTo = (clientX: number) => {
    const box = frame.current?.getBoundingClientRect();
    if (!box || box.width === 0) return;
    setPosition(clampPercent(((clientX - box.left) / box.width) * 100));
  };

  const onKeyDown = (event: KeyboardEvent) => {
    const moves: Record<string, (p: number) => number> = {
      ArrowLeft: (p) => p - STEP,
      ArrowDown: (p) => p - STEP,
      ArrowRight: (p) => p + STEP,
      ArrowUp: (p) => p + STEP,
      PageDown: (p) => p - PAGE,
      PageUp: (p) => p + PAGE,
      Home: () => 0,
      End: () => 100,
    };
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    setPosition((p) => clampPercent(move(p)));
  };

  if (beforeUnreadable) {
    return (
      <figure class="compare-alone">
        <img
          src={after}
          alt={afterLabel}
          style={width && height ? { aspectRatio: `${width} / ${height}` } : undefined}
        />
        <figcaption class="hint">
          This browser cannot show the original's format, so there is nothing to compare.
        </figcaption>
      </figure>
    );
  }

  return (
    <div
      class="compare"
      ref={frame}
      // The ratio also caps the width, so a tall box never letterboxes.
      style={width && height ? { aspectRatio: `${width} / ${height}`, "--ratio": String(width / height) } : undefined}
      onPointerDown={(event) => {
        dragging.current = true;
        (event.currentTarget as HTMLElement).setPointerCapture?.(event.pointerId);
        moveTo(event.clientX);
      }}
      onPointerMove={(event) => dragging.current && moveTo(event.clientX)}
      onPointerUp={() => (dragging.current = false)}
      onPointerCancel={() => (dragging.current = false)}
    >
      <img class="compare-after" src={after} alt={afterLabel} draggable={false} />
      <img
        class="compare-before"
        src={before}
        alt={beforeLabel}
        draggable={false}
        onError={() => setBeforeUnreadable(true)}
        style={{ clipPath: `inset(0 ${100 - position}% 0 0)` }}
      />
      <div
        class="compare-handle"
        role="slider"
        tabIndex={0}
        aria-label="Before and after: move left to see more of the result"
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={position}
        aria-valuetext={`${Math.round(position)}% original, ${Math.round(100 - position)}% watermarked`}
        style={{ left: `${position}%` }}
        onKeyDown={onKeyDown}
      >
        <span aria-hidden="true">◀ ▶</span>
      </div>
      <span class="compare-tag compare-tag-before" aria-hidden="true">
        Original
      </span>
      <span class="compare-tag compare-tag-after" aria-hidden="true">
        Watermarked
      </span>
    </div>
  );
}
