import { render } from "preact";
import { App } from "./App";
import { loadConfig } from "./config";
import "./style.css";

const root = document.getElementById("app")!;

loadConfig()
  .then((config) => render(<App config={config} />, root))
  .catch((error: unknown) => {
    render(
      <main class="fatal">
        <h1>NWS Watermark</h1>
        <p role="alert">
          The page could not start: {String(error instanceof Error ? error.message : error)}. Reload to try again.
        </p>
      </main>,
      root,
    );
  });
