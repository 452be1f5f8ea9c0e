// Regenerates tests/fixtures/github/ from the npm packages pinned in package.json:
// every push, pull_request, ping, create and delete example of @octokit/webhooks-examples
// (api.github.com), and signatures made by @octokit/webhooks-methods' `sign` for a few of them.
//
// Run from this directory after ./install:  node gen-github-fixtures.mjs
// The output is committed; the Rust tests only read it.
import { readFileSync, writeFileSync, mkdirSync, readdirSync, unlinkSync } from "node:fs";
import { createRequire } from "node:module";
import { sign } from "@octokit/webhooks-methods";

const require = createRequire(import.meta.url);
const EVENTS = ["push", "pull_request", "ping", "create", "delete"];
const SECRET = "It's a Secret to Everybody"; // GitHub's documented example secret
const out = new URL("../fixtures/github/", import.meta.url);
mkdirSync(out, { recursive: true });

for (const f of readdirSync(out)) {
  if (/^[a-z_]+\.\d+\.json$/.test(f) || f.endsWith(".urlencoded")) unlinkSync(new URL(f, out));
}

const pkg = require("@octokit/webhooks-examples/package.json");
const index = require("@octokit/webhooks-examples/api.github.com/index.json");
const written = [];
for (const name of EVENTS) {
  const entry = index.find((e) => e.name === name);
  if (!entry) throw new Error(`no ${name} examples in @octokit/webhooks-examples`);
  entry.examples.forEach((example, n) => {
    const file = `${name}.${n}.json`;
    writeFileSync(new URL(file, out), JSON.stringify(example, null, 2) + "\n");
    written.push(file);
  });
}

// Signatures over the exact bytes of a few fixtures, as GitHub would send them.
const signed = ["push.0.json", "pull_request.0.json", "ping.0.json", "delete.0.json"];
const signatures = [];
for (const file of signed) {
  const body = readFileSync(new URL(file, out), "utf8");
  signatures.push({ file, event: file.split(".")[0], content_type: "application/json", signature: await sign(SECRET, body) });
}
// A form-encoded delivery: the signature is over the raw form body, not the JSON inside it.
const formFile = "push.0.urlencoded";
const form = "payload=" + encodeURIComponent(readFileSync(new URL("push.0.json", out), "utf8"));
writeFileSync(new URL(formFile, out), form);
signatures.push({ file: formFile, event: "push", content_type: "application/x-www-form-urlencoded", signature: await sign(SECRET, form) });

const methods = JSON.parse(readFileSync(new URL("node_modules/@octokit/webhooks-methods/package.json", import.meta.url), "utf8"));
writeFileSync(
  new URL("signatures.json", out),
  JSON.stringify({ generator: `${methods.name}@${methods.version} sign()`, secret: SECRET, deliveries: signatures }, null, 2) + "\n",
);
console.log(`wrote ${written.length} examples from ${pkg.name}@${pkg.version} and ${signatures.length} signatures`);
