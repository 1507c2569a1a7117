// The edge-cl device page: polls /api/status, sends the control socket's commands as JSON
// POSTs to /api/COMMAND. Labels are shown with textContent only, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 500;
let teaching = null; // the label being taught from this page, or null
let holding = false;
let starting = null; // the teach request in flight from a press of "Hold to teach"

async function command(cmd, body = {}) {
  const reply = await fetch(`api/${cmd}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await reply.json();
  if (!answer.ok) throw new Error(answer.error);
  return answer;
}

function say(text, error = false) {
  const line = $("message");
  line.textContent = text;
  line.classList.toggle("error", error);
}

async function act(what, cmd, body) {
  try {
    const answer = await command(cmd, body);
    say(what(answer));
    return answer;
  } catch (e) {
    say(e.message, true);
    return null;
  }
}

async function startTeach() {
  const label = $("label").value.trim();
  if (!label) {
    say("type the name of what is in view first", true);
    return false;
  }
  const answer = await act(() => `teaching ${label}: move it around`, "teach", { label });
  teaching = answer ? label : null;
  render();
  return answer !== null;
}

async function stopTeach() {
  const label = teaching;
  teaching = null;
  render();
  await act((a) => `learning ${label} from ${a.frames} frames`, "stop");
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  return `${Math.round(seconds / 60)} min ago`;
}

function classRow(label, stored) {
  const row = document.createElement("tr");
  row.dataset.label = label;
  const name = document.createElement("td");
  name.className = "name";
  name.textContent = label;
  const count = document.createElement("td");
  count.className = "patterns";
  count.textContent = stored === null ? "-" : String(stored);
  const actions = document.createElement("td");
  actions.className = "actions";
  const rename = document.createElement("button");
  rename.className = "rename";
  rename.textContent = "rename";
  rename.onclick = async () => {
    const to = window.prompt(`New name for ${label}`, label);
    if (to && to.trim() && to.trim() !== label) {
      await act(() => `${label} is now ${to.trim()}`, "rename", { label, to: to.trim() });
      poll(false);
    }
  };
  const forget = document.createElement("button");
  forget.className = "forget";
  forget.textContent = "forget";
  forget.onclick = async () => {
    if (window.confirm(`Forget ${label}? Everything learned of it is dropped.`)) {
      await act(() => `forgot ${label}`, "forget", { label });
      poll(false);
    }
  };
  actions.append(rename, forget);
  row.append(name, count, actions);
  return row;
}

let last = null;

function render() {
  $("hold").classList.toggle("active", holding);
  $("toggle").classList.toggle("active", teaching !== null && !holding);
  $("toggle").textContent = teaching !== null && !holding ? "Stop teaching" : "Start teaching";
  $("hold").disabled = teaching !== null && !holding;
  if (last === null) return;
  const s = last;
  const state = $("state");
  state.textContent = s.teaching ? `teaching ${s.teaching} (${s.teach_frames})` : s.state;
  state.className = `badge ${s.state}`;
  $("fps").textContent = s.fps === null ? "-" : s.fps.toFixed(1);
  $("latency").textContent = s.latency_ms === null ? "-" : Math.round(s.latency_ms);
  $("last-update").textContent = ago(s.last_update_s);
  $("learner").textContent = s.learner;
  const verdict = $("verdict");
  verdict.textContent = s.verdict === null ? "waiting for the first frame" : s.verdict;
  verdict.classList.toggle("unknown", Boolean(s.unknown));
  verdict.classList.toggle("empty", Boolean(s.empty) && !s.unknown);
  $("accept").textContent = `${Math.round(100 * s.unknown_accept)}%`;
  $("background").textContent = s.background_label;
  const stored = new Map((s.patterns || []).map(([label, n]) => [String(label), n]));
  const body = document.querySelector("#classes tbody");
  body.replaceChildren(
    ...s.classes.map((c) => classRow(String(c), s.patterns ? stored.get(String(c)) : null)),
  );
  $("no-classes").hidden = s.classes.length > 0;
}

async function poll(again = true) {
  try {
    const reply = await fetch("api/status");
    const answer = await reply.json();
    if (answer.ok) last = answer;
    else say(answer.error, true);
  } catch (e) {
    $("state").textContent = "disconnected";
    $("state").className = "badge";
  }
  render();
  if (again) setTimeout(poll, POLL_MS);
}

$("hold").addEventListener("pointerdown", async (event) => {
  event.preventDefault();
  if (teaching !== null) return;
  holding = true;
  starting = startTeach();
  const started = await starting;
  starting = null;
  if (!started) holding = false;
  render();
});
for (const name of ["pointerup", "pointerleave", "pointercancel"]) {
  $("hold").addEventListener(name, async () => {
    if (!holding) return;
    holding = false;
    if (starting !== null) await starting; // released before the teach was acknowledged
    if (teaching !== null) await stopTeach();
    render();
  });
}
$("toggle").addEventListener("click", async () => {
  if (teaching === null) await startTeach();
  else await stopTeach();
});
$("teach-form").addEventListener("submit", (event) => event.preventDefault());
poll();
