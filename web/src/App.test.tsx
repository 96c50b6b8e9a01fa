import { render, screen } from "@testing-library/preact";
import { describe, expect, it } from "vitest";
import { App } from "./App";
import type { GatewayConfig } from "./config";

function config(auth: boolean): GatewayConfig {
  return {
    max_upload_bytes: 25 * 1024 * 1024,
    auth,
    signed_links: false,
    queue: true,
    trace_viewer: null,
    options: { wm_text: { type: "string", maxLength: 200, default: "NWS Watermark" } },
  };
}

describe("App", () => {
  it("asks for a token only when the gateway wants one, and keeps it for the session", () => {
    sessionStorage.setItem("nws-watermark.token", "abc.def.ghi");
    const { unmount } = render(<App config={config(true)} />);
    const token = screen.getByLabelText(/Access token/) as HTMLInputElement;
    expect(token.type).toBe("password");
    expect(token.value).toBe("abc.def.ghi");
    unmount();
    render(<App config={config(false)} />);
    expect(screen.queryByLabelText(/Access token/)).toBeNull();
  });

  it("starts from the server's defaults and names the upload limit", () => {
    localStorage.clear();
    render(<App config={config(false)} />);
    expect((screen.getByLabelText("Text") as HTMLInputElement).value).toBe("NWS Watermark");
    expect(screen.getByText(/up to 26 MB each/)).toBeTruthy();
  });
});
