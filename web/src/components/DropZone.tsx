// Where images come in: dropped, picked, or pasted anywhere on the page.

import { useEffect, useRef, useState } from "preact/hooks";

export interface DropZoneProps {
  onFiles: (files: File[]) => void;
  maxUploadBytes: number;
}

export function DropZone({ onFiles, maxUploadBytes }: DropZoneProps) {
  const [over, setOver] = useState(false);
  const input = useRef<HTMLInputElement>(null);

  useEffect(() => {
    const onPaste = (event: ClipboardEvent) => {
      const target = event.target as HTMLElement | null;
      // Text pasted into a field stays text.
      if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")) return;
      const files = Array.from(event.clipboardData?.files ?? []);
      if (files.length > 0) {
        event.preventDefault();
        onFiles(files);
      }
    };
    document.addEventListener("paste", onPaste);
    return () => document.removeEventListener("paste", onPaste);
  }, [onFiles]);

  return (
    <div
      class={`dropzone${over ? " over" : ""}`}
      data-testid="dropzone"
      onDragEnter={(e) => {
        e.preventDefault();
        setOver(true);
      }}
      onDragOver={(e) => {
        e.preventDefault();
        if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
      }}
      onDragLeave={() => setOver(false)}
      onDrop={(e) => {
        e.preventDefault();
        setOver(false);
        const files = Array.from(e.dataTransfer?.files ?? []);
        if (files.length > 0) onFiles(files);
      }}
    >
      <p class="drop-title">Drop images here, paste them, or</p>
      <label class="button" for="pick">
        Choose images…
      </label>
      <input
        id="pick"
        ref={input}
        class="visually-hidden"
        type="file"
        multiple
        accept="image/*"
        onChange={(e) => {
          const files = Array.from(e.currentTarget.files ?? []);
          e.currentTarget.value = "";
          if (files.length > 0) onFiles(files);
        }}
      />
      <p class="hint">
        JPEG, PNG, WebP, AVIF, HEIC, GIF, TIFF, BMP… up to {Math.round(maxUploadBytes / 1_000_000)} MB each.
      </p>
    </div>
  );
}
