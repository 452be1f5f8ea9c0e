// Signs GitLab fixtures the way a GitLab webhook with a signing token does (Standard Webhooks:
// `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` with the key inside
// the `whsec_` token), with the `standardwebhooks` reference library, and writes
// ../fixtures/gitlab/signing-token.json. Run: node gen-gitlab-fixtures.mjs
import { readFileSync, writeFileSync } from "node:fs";
import { Webhook } from "standardwebhooks";

// A fixed, made-up 32-byte key: these fixtures are public.
const secret = "whsec_" + Buffer.from("gantry-gitlab-signing-token-test").toString("base64");
const id = "gantry-fixture-delivery-1";
// Fixed, so the fixture never changes; the tests verify it "at" this time.
const timestamp = new Date(1795000000 * 1000);
const wh = new Webhook(secret);
const deliveries = ["push.json", "merge_request-open.json"].map((file) => {
  const body = readFileSync(new URL(`../fixtures/gitlab/${file}`, import.meta.url), "utf8");
  return { file, signature: wh.sign(id, timestamp, body) };
});
writeFileSync(
  new URL("../fixtures/gitlab/signing-token.json", import.meta.url),
  JSON.stringify({ secret, id, timestamp: Math.floor(timestamp / 1000), deliveries }, null, 2) + "\n",
);
