// What the gateway tells the page about itself (GET /ui/config.json): its
// limits, whether it wants a token, and every upload option with its
// default and range, from the same table its parser uses.

export interface OptionSchema {
  type: "string" | "integer" | "number" | "boolean";
  default?: string | number | boolean;
  enum?: string[];
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  maxLength?: number;
  pattern?: string;
}

export interface GatewayConfig {
  max_upload_bytes: number;
  /** Uploads need a bearer token. */
  auth: boolean;
  /** Result links are signed (usable without a token). */
  signed_links: boolean;
  /** Uploads the optimizer cannot take now are kept as jobs. */
  queue: boolean;
  /** A link template holding `{trace_id}`, or null. */
  trace_viewer: string | null;
  options: Record<string, OptionSchema>;
}

export async function loadConfig(fetcher: typeof fetch = fetch): Promise<GatewayConfig> {
  const response = await fetcher("/ui/config.json", { headers: { accept: "application/json" } });
  if (!response.ok) throw new Error(`the gateway's settings could not be read (HTTP ${response.status})`);
  return (await response.json()) as GatewayConfig;
}
