// pi's SessionManager under node, driven by benchmarks/peers.py.
//
//     node --expose-gc pi_session.mjs SESSION_MANAGER_JS COMMAND_JSON
//
// SESSION_MANAGER_JS is dist/core/session-manager.js of @mariozechner/pi-coding-agent
// (peers.py installs a pinned version outside the repository). COMMAND_JSON is one
// command; the answer is one JSON object on stdout with raw samples in microseconds,
// so that Python computes every median and p99 the same way for pi and for us.
//
// What pi does (read from its source, dist/core/session-manager.js): appendMessage
// pushes the entry into memory and appendFileSync's one line (open, write, close; no
// fsync: not durable); nothing is written before the first assistant message.
// SessionManager.open reads and JSON.parses the whole file (twice: once for the
// header's cwd, once to load), then indexes every entry by id. buildSessionContext
// copies the entry list, walks leaf -> root through the id map and returns the
// stored message objects (no conversion to a provider's format).
//
// Commands:
//   {"op": "scale", "dir", "sizes": [...], "content", "budget", "least", "most"}
//       per size: build a session of that many entries, then time SessionManager.open of
//       the file (first, on exactly that many entries), buildSessionContext, append +
//       buildSessionContext (each from the same head of that many entries, reached with
//       branch() and its context built, untimed), a fork (branch to the leaf's parent, append,
//       buildSessionContext) and appendMessage. Samples: as many as fit `budget` seconds,
//       within [least, most] (the operations that append take as many as the context).
//   {"op": "memory_append", "content", "most"}: appendMessage on SessionManager.inMemory, `most` times.
//   {"op": "build", "dir", "size", "content"}: write a session of `size` entries; prints its path.
//   {"op": "open", "path", "n"}: SessionManager.open of an existing file, `n` times in this
//       process; RSS before and after the first open (after a full GC). (Not its context:
//       buildSessionContext is O(path²) in pi, minutes at 10⁶ entries.)

import { pathToFileURL } from "node:url";

const [modulePath, commandJson] = process.argv.slice(2);
const { SessionManager } = await import(pathToFileURL(modulePath).href);
const command = JSON.parse(commandJson);

const USAGE = { input: 0, output: 0, cacheRead: 0, cacheWrite: 0, totalTokens: 0,
    cost: { input: 0, output: 0, cacheRead: 0, cacheWrite: 0, total: 0 } };

/** The i-th message of the benchmark conversation: user and assistant alternate. */
function message(i) {
    const content = [{ type: "text", text: `${command.content} ${i}` }];
    if (i % 2 === 0) return { role: "user", content, timestamp: Date.now() };
    return { role: "assistant", content, api: "openai-completions", provider: "openai", model: "gpt-4o",
        usage: USAGE, stopReason: "stop", timestamp: Date.now() };
}

/** How many samples of `op` fit the command's time budget (its first call is a warm-up). */
function samples(op) {
    const t0 = process.hrtime.bigint();
    op();
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    return Math.max(command.least, Math.min(command.most, Math.floor(command.budget / Math.max(seconds, 1e-6))));
}

/** Run `op` `warmup` times untimed, then `n` times timed (`setup` before each, untimed); µs per call. */
function timed(op, n = samples(op), setup = () => {}, warmup = Math.max(2, Math.floor(n / 10))) {
    for (let i = 0; i < warmup; i++) {
        setup();
        op();
    }
    if (globalThis.gc) globalThis.gc();
    const samples = [];
    for (let i = 0; i < n; i++) {
        setup();
        const t0 = process.hrtime.bigint();
        op();
        samples.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
    return samples;
}

function rss() {
    if (globalThis.gc) globalThis.gc();
    return process.memoryUsage().rss;
}

function build(dir, size) {
    const session = SessionManager.create("/bench", dir);
    for (let i = 0; i < size; i++) session.appendMessage(message(i));
    return session;
}

function scale() {
    const out = {};
    for (const size of command.sizes) {
        const session = build(command.dir, size);
        const row = {};
        const file = session.getSessionFile();
        row.open = timed(() => SessionManager.open(file));  // first: on exactly `size` entries
        row.context = timed(() => session.buildSessionContext());
        let next = size;
        const n = row.context.length;  // the operations that append take as many samples
        const base = session.getLeafId();
        row.append_context = timed(() => {  // from a head of `size` entries whose context was built
            session.appendMessage(message(next++));
            session.buildSessionContext();
        }, Math.min(n, 300), () => {
            session.branch(base);
            session.buildSessionContext();
        });
        row.fork = timed(() => {
            const leaf = session.getEntry(session.getLeafId());
            session.branch(leaf.parentId);
            session.appendMessage(message(next++));
            session.buildSessionContext();
        }, n);
        row.append = timed(() => session.appendMessage(message(next++)), n);
        row.entries = size;
        out[String(size)] = row;
    }
    return out;
}

function memoryAppend() {
    const session = SessionManager.inMemory("/bench");
    for (let i = 0; i < 100; i++) session.appendMessage(message(i));
    let next = 100;
    return { append: timed(() => session.appendMessage(message(next++)), command.most) };
}

function openExisting() {
    const before = rss();
    let first = null;
    const samples = [];
    for (let i = 0; i < command.n; i++) {
        const t0 = process.hrtime.bigint();
        const session = SessionManager.open(command.path);
        samples.push(Number(process.hrtime.bigint() - t0) / 1000);
        if (first === null) first = { rss: rss(), entries: session.getEntries().length };
    }
    return { open: samples, rss_before: before, rss_after: first.rss, entries: first.entries };
}

let result;
if (command.op === "scale") result = scale();
else if (command.op === "memory_append") result = memoryAppend();
else if (command.op === "build") result = { path: build(command.dir, command.size).getSessionFile() };
else if (command.op === "open") result = openExisting();
else throw new Error(`unknown op ${command.op}`);
process.stdout.write(JSON.stringify(result));
