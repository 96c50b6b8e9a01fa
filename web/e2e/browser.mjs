// End-to-end tests of the page in real headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core), against a real gateway
// with its optimizer, storage, Redis and RabbitMQ. Started by
// gateway/tests/browser.rs, which owns the processes: when a scenario needs
// the optimizer stopped or started, this script asks on stdout
// ({"ask": "..."}) and waits for "ok" on stdin.
//
// Environment: NWS_E2E_BASE_URL (the gateway), NWS_TEST_IMAGES (the test
// photos), NWS_CHROMIUM (the browser), NWS_E2E_ARTIFACTS (screenshots go
// there), NWS_E2E_TRACE_VIEWER (the gateway's NWS_TRACE_VIEWER_URL).

import assert from "node:assert/strict";
import { mkdirSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const BASE = must("NWS_E2E_BASE_URL");
const IMAGES = must("NWS_TEST_IMAGES");
const ARTIFACTS = must("NWS_E2E_ARTIFACTS");
const TRACE_VIEWER = must("NWS_E2E_TRACE_VIEWER");
const CHROMIUM = process.env.NWS_CHROMIUM || "/usr/bin/chromium";
/** Bounds every wait; only a failing test reaches it. */
const WAIT = 60_000;

function must(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: gateway/tests/browser.rs sets it`);
  return value;
}

const answers = createInterface({ input: process.stdin });
const lines = answers[Symbol.asyncIterator]();
/** Asks the Rust side to do something to the deployment, and waits until it is done. */
async function ask(what) {
  process.stdout.write(JSON.stringify({ ask: what }) + "\n");
  const { value, done } = await lines.next();
  assert.ok(!done && value.trim() === "ok", `the test harness did not do ${what}: ${value}`);
}

function log(message) {
  process.stdout.write(JSON.stringify({ step: message }) + "\n");
}

mkdirSync(ARTIFACTS, { recursive: true });
// This run's screenshots only: an earlier run's are removed, nothing else.
for (const name of readdirSync(ARTIFACTS)) if (/^\d\d-[a-z0-9-]+\.png$/.test(name)) rmSync(join(ARTIFACTS, name));
async function screenshot(page, name, fullPage = true) {
  const path = join(ARTIFACTS, name);
  await page.screenshot({ path, fullPage });
  log(`screenshot ${path}`);
}

/** Problems a page reports by itself: uncaught errors, CSP violations, console errors. */
function watchProblems(page) {
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    // A refused upload is logged by the browser as a failed resource load;
    // that is the API answering, not the page failing.
    if (
      message.type() === "error" &&
      !/Failed to load resource: the server responded with a status of (4|5)\d\d/.test(message.text())
    ) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  return problems;
}

/** A page in a fresh browser context (a desktop window unless `options` say otherwise), and the problems it reports. */
async function openPage(options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
  const page = await context.newPage();
  return { context, page, problems: watchProblems(page) };
}

/** Drops files on the drop zone as a user's drag and drop does: a drop event carrying them. */
async function dropFiles(page, files) {
  const payload = files.map(({ name, type, bytes }) => ({ name, type, base64: bytes.toString("base64") }));
  const dataTransfer = await page.evaluateHandle((files) => {
    const transfer = new DataTransfer();
    for (const { name, type, base64 } of files) {
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      transfer.items.add(new File([bytes], name, { type }));
    }
    return transfer;
  }, payload);
  await page.dispatchEvent('[data-testid="dropzone"]', "dragenter", { dataTransfer });
  await page.dispatchEvent('[data-testid="dropzone"]', "drop", { dataTransfer });
}

function photo(name, type = "image/jpeg") {
  return { name, type, bytes: readFileSync(join(IMAGES, name)) };
}

function card(page, name) {
  return page.locator(`article[data-file="${name}"]`);
}

async function untilDone(page, name) {
  const status = card(page, name).locator(".status");
  await status.filter({ hasText: /^Done|^Failed/ }).waitFor({ timeout: WAIT });
  const text = await status.textContent();
  assert.match(text, /^Done/, `${name}: ${text} — ${await card(page, name).textContent()}`);
}

/** The steps' and the total's times as shown, in ms. */
async function shownTimings(cardLocator) {
  const steps = await cardLocator
    .locator("tbody tr[data-step]")
    .evaluateAll((rows) =>
      rows.map((row) => [row.getAttribute("data-step"), Number(row.querySelector("td").getAttribute("data-ms"))]),
    );
  const stages = await cardLocator
    .locator("tbody tr[data-stage]")
    .evaluateAll((rows) =>
      rows.map((row) => [row.getAttribute("data-stage"), Number(row.querySelector("td").getAttribute("data-ms"))]),
    );
  const total = Number(await cardLocator.locator("tfoot td").getAttribute("data-ms"));
  return { steps: new Map(steps), stages: new Map(stages), total };
}

const sum = (values) => values.reduce((a, b) => a + b, 0);

const launchArgs = [
  "--no-sandbox",
  "--disable-background-networking",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-component-update",
  "--disable-sync",
];
const browser = await chromium.launch({ executablePath: CHROMIUM, args: launchArgs });
try {
  await desktop();
  await phone();
  await queuedJob();
  await severalAtOnce();
  await accessibility();
  log("all scenarios passed");
} finally {
  await browser.close();
  // Stdin open would keep the process, and the test waiting for its end.
  answers.close();
  process.stdin.destroy();
}

async function desktop() {
  log("desktop: drop a photo, read the timings, move the slider, refuse a text file, keep the settings");
  const { context, page, problems } = await openPage();
  const traceparents = [];
  page.on("request", (request) => {
    if (request.url().endsWith("/v1/watermark"))
      traceparents.push({ header: request.headers()["traceparent"], body: request.postData() ?? "" });
  });

  const response = await page.goto(BASE);
  assert.equal(response.status(), 200);
  const csp = response.headers()["content-security-policy"];
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  await page.getByRole("heading", { name: "NWS Watermark" }).waitFor();

  // Settings that must survive an error, a reload and be sent.
  await page.getByLabel("Text", { exact: true }).fill("E2E © mark");
  await page.getByLabel("Top left").check();
  await page.getByLabel("Format").selectOption("jpeg");

  const kleiber = photo("kleiber_4000x3000.jpg");
  await dropFiles(page, [kleiber]);
  await untilDone(page, kleiber.name);
  const done = card(page, kleiber.name);

  // The result is shown, with both sizes.
  const result = done.getByAltText(`Watermarked: ${kleiber.name}`);
  const shownWidth = await result.evaluate(async (img) => (await img.decode(), img.naturalWidth));
  assert.equal(shownWidth, 1440, "the result (4000×3000 fitted into 1920×1080 is 1440×1080) is displayed");
  assert.match(await done.locator('[data-role="original-size"]').textContent(), /^4000×3000, 2\.56 MB$/);
  assert.match(await done.locator('[data-role="result-size"]').textContent(), /^1440×1080, [\d.]+ KB, image\/jpeg$/);

  // The request carried a traceparent; the page shows that trace.
  const sent = traceparents.at(-1);
  assert.match(sent.header, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
  const traceId = sent.header.split("-")[1];
  const traceLink = done.locator(".trace a");
  assert.equal(await traceLink.textContent(), traceId, "the trace the browser started is the one the gateway reports");
  assert.equal(await traceLink.getAttribute("href"), TRACE_VIEWER.replace("{trace_id}", traceId));

  // Where the time went: every step of a render, adding up to the total.
  const timings = await shownTimings(done);
  for (const step of ["upload", "l1", "store", "render"])
    assert.ok(timings.steps.has(step), `step ${step} is shown: ${[...timings.steps.keys()]}`);
  for (const stage of ["decode", "resize", "watermark", "encode"])
    assert.ok(timings.stages.get(stage) > 0 || stage === "watermark", `stage ${stage} is shown`);
  assert.ok(timings.total > 0);
  assert.ok(
    Math.abs(sum([...timings.steps.values()]) - timings.total) < 0.05 + 1e-9,
    `steps ${JSON.stringify([...timings.steps])} add up to ${timings.total}`,
  );
  assert.ok(
    Math.abs(sum([...timings.stages.values()]) - timings.steps.get("render")) < 0.05 + 1e-9,
    "the optimizer's stages add up to its step",
  );
  assert.match(await done.locator(".cache").textContent(), /^MISS: rendered now/);

  // The slider, by keyboard only: Tab reaches it, arrows, Home and End move it.
  const slider = done.getByRole("slider");
  let reached = false;
  await page.locator("body").focus();
  for (let i = 0; i < 80 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await slider.evaluate((el) => el === document.activeElement);
  }
  assert.ok(reached, "Tab reaches the slider");
  const original = done.getByAltText(`Original: ${kleiber.name}`);
  for (let i = 0; i < 5; i++) await page.keyboard.press("ArrowLeft");
  assert.equal(await slider.getAttribute("aria-valuenow"), "45");
  assert.equal(await original.evaluate((img) => img.style.clipPath), "inset(0px 55% 0px 0px)");
  await page.keyboard.press("Home");
  assert.equal(await slider.getAttribute("aria-valuenow"), "0");
  await page.keyboard.press("End");
  assert.equal(await slider.getAttribute("aria-valuenow"), "100");
  await page.keyboard.press("PageDown");
  await page.keyboard.press("PageDown");
  await page.keyboard.press("PageDown");
  assert.equal(await slider.getAttribute("aria-valuenow"), "70");
  // And by mouse: a click a quarter of the way across.
  const box = await done.locator(".compare").boundingBox();
  await page.mouse.click(box.x + box.width * 0.25, box.y + box.height / 2);
  const byMouse = Number(await slider.getAttribute("aria-valuenow"));
  assert.ok(Math.abs(byMouse - 25) <= 1, `a click at 25% puts the handle at ${byMouse}`);
  // The position grid is now a thumbnail of the photo.
  assert.match(
    await page.locator(".position-grid").evaluate((grid) => getComputedStyle(grid).backgroundImage),
    /url\("blob:/,
  );
  const shape = await done.locator(".compare").boundingBox();
  assert.ok(
    Math.abs(shape.width / shape.height - 1440 / 1080) < 0.02,
    `the comparison is ${shape.width}×${shape.height}, the result's shape`,
  );
  await screenshot(page, "01-desktop-result.png");

  // The settings were sent: the same upload with those options, made
  // through the API, names the same result (a key covers every option).
  const resultPath = new URL(await done.getByLabel("Result link").inputValue()).pathname;
  const direct = await page.request.post(`${BASE}/v1/watermark`, {
    headers: { accept: "image/avif,image/webp,image/png,image/jpeg;q=0.9,*/*;q=0.5" },
    multipart: {
      wm_text: "E2E © mark",
      wm_position: "top-left",
      format: "jpeg",
      image: { name: kleiber.name, mimeType: kleiber.type, buffer: kleiber.bytes },
    },
  });
  assert.equal(direct.status(), 200);
  assert.equal(direct.headers()["content-location"], resultPath, "the page sent the text and the position set");

  // The download and the copyable link.
  const download = done.getByRole("link", { name: "Download" });
  assert.equal(await download.getAttribute("download"), "kleiber_4000x3000-watermarked.jpg");
  const link = await done.getByLabel("Result link").inputValue();
  assert.match(link, new RegExp(`^${BASE}/v1/images/[0-9a-f]{64}$`));
  const fetched = await page.request.get(link);
  assert.equal(fetched.status(), 200, "the copied link serves the result");

  // A text file: a readable refusal, settings untouched, retry offered.
  await page.locator("#pick").setInputFiles({
    name: "notes.txt",
    mimeType: "text/plain",
    buffer: Buffer.from("these are notes, not a photo\n"),
  });
  const refused = card(page, "notes.txt");
  await refused.getByRole("alert").waitFor({ timeout: WAIT });
  const alert = await refused.getByRole("alert").textContent();
  assert.match(alert, /Not an image the server can read/);
  assert.match(alert, /HTTP 415/);
  assert.equal(
    await page.getByLabel("Text", { exact: true }).inputValue(),
    "E2E © mark",
    "the settings are kept after an error",
  );
  assert.ok(await refused.getByRole("button", { name: /Retry/ }).isVisible());
  await screenshot(page, "02-desktop-refused-text-file.png");

  // The settings persist across visits.
  await page.reload();
  await page.getByRole("heading", { name: "NWS Watermark" }).waitFor();
  assert.equal(await page.getByLabel("Text", { exact: true }).inputValue(), "E2E © mark");
  assert.ok(await page.getByLabel("Top left").isChecked());
  assert.equal(await page.getByLabel("Format").inputValue(), "jpeg");

  assert.deepEqual(problems, [], "the page reported no error and no CSP violation");
  await context.close();
}

async function phone() {
  log("phone: one column, no sideways scrolling, the slider by touch");
  const { context, page, problems } = await openPage({
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
  });
  await page.goto(BASE);
  // The settings start folded, so the drop zone is on the first screen.
  assert.equal(await page.locator("details.settings").getAttribute("open"), null);
  const zone = await page.getByTestId("dropzone").boundingBox();
  assert.ok(zone.y + zone.height <= 844, `the drop zone is on the first screen (${zone.y}+${zone.height})`);
  await page.getByText("Settings", { exact: true }).click();
  assert.notEqual(await page.locator("details.settings").getAttribute("open"), null, "a tap opens them");
  const picos = photo("picos_orient6.jpg");
  await dropFiles(page, [picos]);
  await untilDone(page, picos.name);
  const phoneShape = await card(page, picos.name).locator(".compare").boundingBox();
  assert.ok(Math.abs(phoneShape.width / phoneShape.height - 1440 / 1080) < 0.02, "no letterboxing");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page fits the phone's width (${overflow}px too wide)`);
  const settings = await page.locator("aside").boundingBox();
  const images = await page.locator("main").boundingBox();
  assert.ok(settings.y + settings.height <= images.y + 1, "settings and images stack in one column");
  const done = card(page, picos.name);
  const compare = await done.locator(".compare").boundingBox();
  assert.ok(compare.width <= 390, "the comparison fits the screen");
  await done.locator(".compare").scrollIntoViewIfNeeded();
  const box = await done.locator(".compare").boundingBox();
  await page.touchscreen.tap(box.x + box.width * 0.75, box.y + box.height / 2);
  const byTouch = Number(await done.getByRole("slider").getAttribute("aria-valuenow"));
  assert.ok(Math.abs(byTouch - 75) <= 1.5, `a tap at 75% puts the handle at ${byTouch}`);
  await screenshot(page, "04-phone.png");
  assert.deepEqual(problems, []);
  await context.close();
}

async function queuedJob() {
  log("queued job: the optimizer stops, an upload is kept as a job, followed live, done once it starts");
  await ask("stop-optimizer");
  const { context, page, problems } = await openPage();
  await page.goto(BASE);
  const followed = page.waitForRequest((request) => /\/v1\/jobs\/[0-9a-f]{64}\/events$/.test(request.url()), {
    timeout: WAIT,
  });
  // A photo not rendered before with these settings, so no cache answers it.
  const dragonfly = photo("dragonfly_4224x3168_progressive.jpg");
  await dropFiles(page, [dragonfly]);
  const status = card(page, dragonfly.name).locator(".status");
  await status.filter({ hasText: /^Queued/ }).waitFor({ timeout: WAIT });
  await followed; // the page follows the job over its event stream
  await screenshot(page, "03-queued-job-waiting.png");
  await ask("start-optimizer");
  await untilDone(page, dragonfly.name);
  assert.equal(await status.textContent(), "Done (from the queued job)");
  const done = card(page, dragonfly.name);
  assert.ok(
    (await done
      .getByAltText(`Watermarked: ${dragonfly.name}`)
      .evaluate(async (img) => (await img.decode(), img.naturalWidth))) > 0,
  );
  // Served from storage, without the optimizer's size headers: the
  // comparison takes the result's own shape.
  const shape = await done.locator(".compare").boundingBox();
  assert.ok(
    Math.abs(shape.width / shape.height - 4224 / 3168) < 0.02,
    `the comparison is ${shape.width}×${shape.height}`,
  );
  assert.match(await done.locator('[data-role="result-size"]').textContent(), /^1440×1080, /);
  // The job's own render, stage by stage, then the fetch of its result.
  const rendered = await shownTimings(done.getByRole("region", { name: "The queued job's render" }));
  assert.ok(
    rendered.stages.get("decode") > 0 && rendered.stages.get("encode") > 0,
    JSON.stringify([...rendered.stages]),
  );
  assert.ok(Math.abs(sum([...rendered.stages.values()]) - rendered.steps.get("render")) < 0.05 + 1e-9);
  assert.equal(rendered.total, rendered.steps.get("render"));
  const fetched = done.getByRole("region", { name: "Fetching its result" });
  const timings = await shownTimings(fetched);
  assert.ok(Math.abs(sum([...timings.steps.values()]) - timings.total) < 0.05 + 1e-9);
  assert.match(await fetched.locator(".cache").textContent(), /^HIT-(L1|L2|STORE)/);
  await screenshot(page, "05-queued-job-done.png");
  assert.deepEqual(problems, []);
  await context.close();
}

async function severalAtOnce() {
  log("several at once: a logo, a pasted image and two dropped ones, two uploading at a time");
  const { context, page, problems } = await openPage();
  const started = [];
  page.on("request", (request) => {
    if (request.url().endsWith("/v1/watermark")) started.push(request);
  });
  await page.goto(BASE);
  await page.getByLabel(/Logo/).setInputFiles(join(IMAGES, "seeding_alpha_2000x1125.png"));
  await page.getByLabel("Format").selectOption("png");
  // A paste anywhere but a text field is an upload.
  const pasted = { name: "pasted.jpg", type: "image/jpeg", bytes: readFileSync(join(IMAGES, "tiny_16x16.jpg")) };
  await page.evaluate(
    ({ name, type, base64 }) => {
      const transfer = new DataTransfer();
      transfer.items.add(new File([Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))], name, { type }));
      document.body.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true }));
    },
    { ...pasted, base64: pasted.bytes.toString("base64") },
  );
  const dropped = [photo("life_gray_3088x2056.jpg"), photo("tiny_16x16.jpg")];
  await dropFiles(page, dropped);
  for (const name of [pasted.name, ...dropped.map((d) => d.name)]) await untilDone(page, name);
  assert.equal(started.length, 3, "one upload per image");
  for (const name of [pasted.name, ...dropped.map((d) => d.name)]) {
    assert.match(await card(page, name).locator('[data-role="result-size"]').textContent(), /, image\/png$/);
  }
  // The logo went with each: drawn, the grey photo's result is not grey.
  const colours = await card(page, "life_gray_3088x2056.jpg")
    .getByAltText("Watermarked: life_gray_3088x2056.jpg")
    .evaluate(async (img) => {
      await img.decode();
      const canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const context = canvas.getContext("2d");
      context.drawImage(img, 0, 0);
      const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
      let coloured = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (Math.max(data[i], data[i + 1], data[i + 2]) - Math.min(data[i], data[i + 1], data[i + 2]) > 40) coloured++;
      }
      return coloured;
    });
  assert.ok(colours > 500, `the logo's colours are drawn on the grey photo (${colours} coloured pixels)`);
  await screenshot(page, "06-several-at-once-with-a-logo.png");
  assert.deepEqual(problems, []);
  await context.close();
}

async function accessibility() {
  log("accessibility: axe-core on a page with a result, a refusal and every setting");
  // axe-core writes HTML from strings, which the page's own policy
  // (require-trusted-types-for 'script') forbids: only this scan bypasses
  // it; every other scenario runs under it and watches for violations.
  const { context, page } = await openPage({ bypassCSP: true });
  await page.goto(BASE);
  const tiny = photo("tiny_16x16.jpg");
  await dropFiles(page, [tiny]);
  await untilDone(page, tiny.name);
  await page.locator("#pick").setInputFiles({ name: "empty.png", mimeType: "image/png", buffer: Buffer.alloc(0) });
  await card(page, "empty.png").getByRole("alert").waitFor({ timeout: WAIT });
  await page.getByLabel(/Fixed colour/).check();
  await page.addScriptTag({ content: readFileSync(require.resolve("axe-core/axe.min.js"), "utf8") });
  for (const scheme of ["light", "dark"]) {
    await page.emulateMedia({ colorScheme: scheme });
    const results = await page.evaluate(() =>
      window.axe.run(document, { runOnly: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"] }),
    );
    const serious = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
    const minor = results.violations.filter((v) => !serious.includes(v));
    log(
      `axe (${scheme}): ${results.passes.length} rules pass, ${serious.length} serious, ${minor.length} minor${minor.length ? ": " + minor.map((v) => `${v.id} (${v.impact})`).join(", ") : ""}`,
    );
    assert.deepEqual(
      serious.map((v) => `${v.id}: ${v.help} — ${v.nodes.map((n) => n.target.join(" ")).join("; ")}`),
      [],
      `no serious accessibility violation (${scheme})`,
    );
  }
  await screenshot(page, "07-accessibility-scan-state.png");
  await context.close();
}
