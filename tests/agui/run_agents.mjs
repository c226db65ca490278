// Runs AG-UI scenarios with the official HttpAgent against a runnerd, and prints one JSON report.
//
// argv[2]: {"base": "http://127.0.0.1:PORT", "agent": "...", "scenarios": [{name, threadId, runId,
//            forwardedProps, query, onReady: null | "abort" | "cancel"}]}
// Each report: the events the agent applied, every console warning/error the client printed, the
// outcome of runAgent(), and a second, independent pass of the raw events through verifyEvents()
// and the zod EventSchema of @ag-ui/core.
import { HttpAgent, verifyEvents } from "@ag-ui/client";
import { EventSchema } from "@ag-ui/core/schemas";
import { from, lastValueFrom, toArray } from "rxjs";

const spec = JSON.parse(process.argv[2]);
const warnings = [];
for (const level of ["warn", "error"]) {
  console[level] = (...args) => warnings.push(args.map(String).join(" "));
}

async function cancelViaV1(threadId) {
  const auth = { Authorization: `Bearer ${spec.token}` };
  const list = await (await fetch(`${spec.base}/v1/turns?session_id=${encodeURIComponent(threadId)}`,
                                  { headers: auth })).json();
  const turn = list.turns[0];
  await fetch(`${spec.base}/v1/turns/${turn.turn_id}/cancel`,
              { method: "POST", body: "{}", headers: { ...auth, "Content-Type": "application/json" } });
}

async function independentCheck(events) {
  const schemaErrors = [];
  for (const e of events) {
    const parsed = EventSchema.safeParse(e);
    if (!parsed.success) schemaErrors.push(`${e.type}: ${parsed.error.message}`);
  }
  let verifyError = null;
  try {
    await lastValueFrom(from(events).pipe(verifyEvents(), toArray()));
  } catch (err) {
    verifyError = String(err.message ?? err);
  }
  return { schemaErrors, verifyError };
}

async function run(s) {
  warnings.length = 0;
  const query = s.query ? `?${new URLSearchParams(s.query)}` : "";
  const agent = new HttpAgent({
    url: `${spec.base}/v1/agents/${s.agent ?? spec.agent}/ag-ui${query}`,
    threadId: s.threadId,
    headers: { Authorization: `Bearer ${spec.token}` },
    initialMessages: [{ id: "u1", role: "user", content: "hello" }],
    initialState: { from: "client" },
  });
  const events = [];
  const raw = [];
  const originalRun = agent.run.bind(agent);
  agent.run = (input) => {  // the events as they came off the wire, before the client's pipeline
    const obs = originalRun(input);
    return new obs.constructor((sub) => obs.subscribe({
      next: (e) => { raw.push(e); sub.next(e); }, error: (e) => sub.error(e), complete: () => sub.complete(),
    }));
  };
  let acted = false;
  const subscriber = {
    onEvent: ({ event }) => {
      events.push(event);
      if (!acted && event.type === "CUSTOM" && event.name === "ready" && s.onReady) {
        acted = true;
        if (s.onReady === "abort") agent.abortRun();
        else cancelViaV1(s.threadId);
      }
    },
  };
  let outcome;
  try {
    const result = await agent.runAgent({ runId: s.runId, forwardedProps: s.forwardedProps ?? {} }, subscriber);
    outcome = { ok: true, result: result.result ?? null, newMessages: result.newMessages.length };
  } catch (err) {
    outcome = { ok: false, error: String(err.message ?? err) };
  }
  const check = await independentCheck(raw);
  return {
    name: s.name, outcome, warnings: [...warnings], types: events.map((e) => e.type),
    rawTypes: raw.map((e) => e.type), raw, messages: agent.messages, state: agent.state, ...check,
  };
}

const reports = [];
for (const s of spec.scenarios) reports.push(await run(s));
process.stdout.write(JSON.stringify(reports));
