// What to tell the user about a refusal: a headline in their words, the
// API's own message, and whether (and when) trying again can help.

import type { ApiError } from "./api";
import { formatBytes } from "./format";

export interface Explained {
  title: string;
  detail: string;
  /** Trying again as it is can work (after `waitSeconds`, when given). */
  retryable: boolean;
  waitSeconds?: number;
  /** A token is needed: the token field is where to go. */
  needsToken?: boolean;
}

export function explain(error: ApiError, maxUploadBytes?: number): Explained {
  const detail = error.message;
  switch (error.status) {
    case 0:
      return { title: "The gateway could not be reached", detail, retryable: true };
    case 400:
      return { title: "The server refused this upload", detail, retryable: false };
    case 401:
      return { title: "Not signed in: paste a token above", detail, retryable: true, needsToken: true };
    case 403:
      return { title: "This token may not do that", detail, retryable: true, needsToken: true };
    case 408:
      return { title: "The upload stalled", detail, retryable: true };
    case 413:
      return {
        title: maxUploadBytes ? `Too large: the limit is ${formatBytes(maxUploadBytes)}` : "Too large",
        detail,
        retryable: false,
      };
    case 415:
      return { title: "Not an image the server can read", detail, retryable: false };
    case 429:
      return {
        title:
          error.retryAfter !== undefined ? `Rate limited: wait ${error.retryAfter} s` : "Rate limited: wait a moment",
        detail,
        retryable: true,
        waitSeconds: error.retryAfter,
      };
    case 503:
      return {
        title:
          error.retryAfter !== undefined ? `The server is busy: retry in ${error.retryAfter} s` : "The server is busy",
        detail,
        retryable: true,
        waitSeconds: error.retryAfter,
      };
    case 504:
      return { title: "The server took too long", detail, retryable: true };
    default:
      return { title: `The server failed (HTTP ${error.status})`, detail, retryable: true };
  }
}
