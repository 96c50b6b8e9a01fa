import { describe, expect, it } from "vitest";
import { ApiError, retryAfterSeconds } from "./api";
import { explain } from "./errors";

describe("errors", () => {
  it("say what happened in the user's words, with the API's message", () => {
    const notImage = explain(
      new ApiError(415, "INVALID_ARGUMENT", "the upload is not an image this service reads (text/plain)"),
    );
    expect(notImage.title).toBe("Not an image the server can read");
    expect(notImage.detail).toContain("text/plain");
    expect(notImage.retryable).toBe(false);

    expect(explain(new ApiError(413, "RESOURCE_EXHAUSTED", "too big"), 25 * 1024 * 1024).title).toBe(
      "Too large: the limit is 26.21 MB",
    );
    expect(explain(new ApiError(401, "UNAUTHENTICATED", "no token")).needsToken).toBe(true);
  });

  it("give the wait of a rate limit or a busy server", () => {
    const limited = explain(new ApiError(429, "RESOURCE_EXHAUSTED", "slow down", 7));
    expect(limited).toMatchObject({ title: "Rate limited: wait 7 s", retryable: true, waitSeconds: 7 });
    expect(explain(new ApiError(503, "UNAVAILABLE", "busy", 2)).title).toBe("The server is busy: retry in 2 s");
  });

  it("read Retry-After as seconds or as a date", () => {
    expect(retryAfterSeconds("3")).toBe(3);
    expect(retryAfterSeconds("Wed, 21 Oct 2015 07:28:10 GMT", Date.parse("Wed, 21 Oct 2015 07:28:00 GMT"))).toBe(10);
    expect(retryAfterSeconds(null)).toBeUndefined();
    expect(retryAfterSeconds("soon")).toBeUndefined();
  });
});
