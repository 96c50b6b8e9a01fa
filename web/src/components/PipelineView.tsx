// Where a response's time went: one bar per step of the request, the
// optimizer's stages inside its step, from the response's Server-Timing.

import { formatDuration, type Pipeline, type Step } from "../timing";
import { traceLink } from "../trace";

export interface PipelineViewProps {
  pipeline: Pipeline;
  cache?: string;
  traceId?: string;
  traceViewer?: string | null;
  /** What these times are of, when a card shows more than one set. */
  label?: string;
}

const CACHE_WORDS: Record<string, string> = {
  "HIT-L1": "served from the gateway's memory",
  "HIT-L2": "served from Redis",
  "HIT-STORE": "served from storage",
  MISS: "rendered now",
  COALESCED: "shared with an identical request",
};

function share(step: Step, total: number): string {
  return total > 0 ? `${Math.max(0.5, (step.duration / total) * 100)}%` : "0%";
}

export function PipelineView({ pipeline, cache, traceId, traceViewer, label }: PipelineViewProps) {
  const { steps, total } = pipeline;
  const link = traceId ? traceLink(traceViewer, traceId) : undefined;
  return (
    <section class="pipeline" aria-label={label ?? "Where the time went"}>
      {label && <h4>{label}</h4>}
      <div class="pipeline-bar" aria-hidden="true">
        {steps.map((step) => (
          <span
            key={step.name}
            class={`seg seg-${step.name}`}
            style={{ width: share(step, total) }}
            title={`${step.label}: ${formatDuration(step.duration)}`}
          />
        ))}
      </div>
      <table class="pipeline-table">
        <caption class="visually-hidden">Time per step, in milliseconds</caption>
        <tbody>
          {steps.map((step) => [
            <tr key={step.name} data-step={step.name}>
              <th scope="row">
                <span class={`swatch seg-${step.name}`} aria-hidden="true" />
                {step.label}
              </th>
              <td data-ms={step.duration}>{formatDuration(step.duration)}</td>
            </tr>,
            ...(step.stages ?? []).map((stage) => (
              <tr key={`${step.name}.${stage.name}`} class="stage" data-stage={stage.name}>
                <th scope="row">{stage.label}</th>
                <td data-ms={stage.duration}>{formatDuration(stage.duration)}</td>
              </tr>
            )),
          ])}
        </tbody>
        <tfoot>
          <tr data-step="total">
            <th scope="row">Total</th>
            <td data-ms={total}>{formatDuration(total)}</td>
          </tr>
        </tfoot>
      </table>
      <p class="pipeline-meta">
        {cache && (
          <span class="cache" data-cache={cache}>
            <abbr title="X-Cache">{cache}</abbr>: {CACHE_WORDS[cache] ?? "cache result"}
          </span>
        )}
        {traceId && (
          <span class="trace">
            Trace{" "}
            {link ? (
              <a href={link} target="_blank" rel="noopener noreferrer">
                <code>{traceId}</code>
              </a>
            ) : (
              <code>{traceId}</code>
            )}
          </span>
        )}
      </p>
    </section>
  );
}
