//! The OpenAPI description of `/api/v1`, served at `/api/v1/openapi.json` and committed as
//! `docs/openapi.json` (a test fails when the two differ: regenerate with
//! `GANTRY_BLESS=1 cargo test -p gantry-server --test it openapi`).

use axum::Json;
use serde_json::{Value, json};

/// `GET /api/v1/openapi.json`
pub async fn serve() -> Json<Value> {
    Json(document())
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": schema })
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn uuid() -> Value {
    json!({ "type": "string", "format": "uuid" })
}

fn step_params() -> Vec<Value> {
    vec![
        path_param("job", "The job id.", uuid()),
        path_param(
            "attempt",
            "The attempt, from 1.",
            json!({ "type": "integer", "minimum": 1 }),
        ),
        path_param(
            "step",
            "The step's index in the job, from 0.",
            json!({ "type": "integer", "minimum": 0 }),
        ),
    ]
}

fn change(summary: &str, id_param: Value, result_key: &str) -> Value {
    json!({
        "post": {
            "summary": summary,
            "security": [{ "bearer": [] }],
            "parameters": [id_param],
            "responses": {
                "200": json_response("Done.", json!({
                    "type": "object",
                    "properties": { result_key: { "type": "boolean" } },
                    "required": [result_key]
                })),
                "401": error_response("No or wrong token."),
                "404": error_response("No such thing."),
                "409": error_response("Not possible in its current state.")
            }
        }
    })
}

/// The document. Built in code so it cannot drift from what the server serves.
pub fn document() -> Value {
    let state = json!({
        "type": "string",
        "enum": ["queued", "pending", "running", "success", "failure", "cancelled", "error", "skipped"]
    });
    let ts = json!({ "type": "string", "format": "date-time" });
    let opt_ts = json!({ "type": ["string", "null"], "format": "date-time" });
    let opt_str = json!({ "type": ["string", "null"] });
    let read_security = json!([{}, { "bearer": [] }]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Gantry API",
            "version": "1",
            "description": "Runs, jobs, steps and their logs. Anything that changes state needs `Authorization: Bearer <GANTRY_API_TOKEN>`; reads are public unless the server keeps them private, then they need the token too."
        },
        "servers": [{ "url": "/" }],
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": { "error": { "type": "string" } },
                    "required": ["error"]
                },
                "State": state,
                "Step": {
                    "type": "object",
                    "properties": {
                        "index": { "type": "integer" },
                        "name": { "type": "string" },
                        "status": { "$ref": "#/components/schemas/State" },
                        "exit_code": { "type": ["integer", "null"] },
                        "reason": opt_str,
                        "summary": {
                            "type": ["string", "null"],
                            "description": "What the step produced, in a line or a few: the digest a kaniko step pushed, a trivy scan's findings, the commit a gitops step pushed. Null when it said nothing; at most 4 KiB (longer ones are cut, ending with a line that says so)."
                        },
                        "started_at": opt_ts,
                        "finished_at": opt_ts
                    },
                    "required": ["index", "name", "status"]
                },
                "Job": {
                    "type": "object",
                    "description": "One attempt of a job.",
                    "properties": {
                        "id": uuid(),
                        "name": { "type": "string" },
                        "attempt": { "type": "integer", "minimum": 1 },
                        "needs": { "type": "array", "items": { "type": "string" } },
                        "status": { "$ref": "#/components/schemas/State" },
                        "reason": opt_str,
                        "allow_failure": { "type": "boolean" },
                        "queue_position": { "type": "integer", "description": "1-based place in the queue, while queued." },
                        "created_at": ts,
                        "started_at": opt_ts,
                        "finished_at": opt_ts,
                        "steps": { "type": "array", "items": { "$ref": "#/components/schemas/Step" } }
                    },
                    "required": ["id", "name", "attempt", "needs", "status", "steps"]
                },
                "Run": {
                    "type": "object",
                    "properties": {
                        "id": uuid(),
                        "number": { "type": "integer", "minimum": 1, "description": "The run's number in its repository: 1, 2, …" },
                        "pipeline": { "type": "string" },
                        "file": { "type": "string" },
                        "forge": { "type": "string", "enum": ["github", "gitlab", "gitea"] },
                        "repository": { "type": "string" },
                        "ref": { "type": "string" },
                        "branch": opt_str,
                        "tag": opt_str,
                        "pull_request": { "type": ["integer", "null"] },
                        "commit": { "type": "string" },
                        "commit_url": { "type": "string", "description": "The commit on the forge, when known." },
                        "message": opt_str,
                        "author": opt_str,
                        "event": { "type": "string", "enum": ["push", "pull_request", "tag", "manual"] },
                        "status": { "$ref": "#/components/schemas/State" },
                        "reason": opt_str,
                        "created_at": ts,
                        "started_at": opt_ts,
                        "finished_at": opt_ts,
                        "jobs": {
                            "type": "array",
                            "description": "Every attempt of every job (absent in lists).",
                            "items": { "$ref": "#/components/schemas/Job" }
                        }
                    },
                    "required": ["id", "pipeline", "repository", "ref", "commit", "event", "status"]
                },
                "LogLine": {
                    "type": "object",
                    "description": "One stored line. Secrets are already masked as ***.",
                    "properties": {
                        "number": { "type": "integer", "minimum": 1 },
                        "at": ts,
                        "stream": { "type": "string", "enum": ["stdout", "stderr", "system"] },
                        "text": { "type": "string", "description": "May hold ANSI escape sequences; at most 64 KiB (longer output lines are split)." }
                    },
                    "required": ["number", "at", "stream", "text"]
                }
            }
        },
        "paths": {
            "/api/v1/runs": {
                "get": {
                    "summary": "Runs, newest first, without their jobs.",
                    "security": read_security,
                    "parameters": [
                        query_param("repository", "`owner/name`.", json!({ "type": "string" })),
                        query_param("branch", "Branch.", json!({ "type": "string" })),
                        query_param("status", "Comma-separated states.", json!({ "type": "string" })),
                        query_param("event", "push, pull_request, tag or manual.", json!({ "type": "string" })),
                        query_param("pipeline", "The pipeline file.", json!({ "type": "string" })),
                        query_param("limit", "Page size (1–500, default 50).", json!({ "type": "integer" })),
                        query_param("before", "The last run id of the previous page.", uuid())
                    ],
                    "responses": {
                        "200": json_response("A page of runs.", json!({
                            "type": "object",
                            "properties": {
                                "runs": { "type": "array", "items": { "$ref": "#/components/schemas/Run" } },
                                "next_before": { "type": ["string", "null"], "format": "uuid" }
                            },
                            "required": ["runs"]
                        })),
                        "400": error_response("A bad filter."),
                        "401": error_response("Reads need the token on this server.")
                    }
                }
            },
            "/api/v1/runs/{id}": {
                "get": {
                    "summary": "A run with every attempt of every job and their steps.",
                    "security": read_security,
                    "parameters": [path_param("id", "The run id.", uuid())],
                    "responses": {
                        "200": json_response("The run.", json!({ "$ref": "#/components/schemas/Run" })),
                        "404": error_response("No such run.")
                    }
                }
            },
            "/api/v1/runs/{id}/cancel": change("Cancels a run.", path_param("id", "The run id.", uuid()), "cancelled"),
            "/api/v1/runs/{id}/retry": change("Runs the failed jobs of a finished run again.", path_param("id", "The run id.", uuid()), "retried"),
            "/api/v1/jobs/{id}": {
                "get": {
                    "summary": "One attempt of a job (the latest unless `attempt` is given).",
                    "security": read_security,
                    "parameters": [
                        path_param("id", "The job id.", uuid()),
                        query_param("attempt", "The attempt.", json!({ "type": "integer", "minimum": 1 }))
                    ],
                    "responses": {
                        "200": json_response("The job attempt and its run id.", json!({
                            "allOf": [
                                { "$ref": "#/components/schemas/Job" },
                                { "type": "object", "properties": { "run_id": uuid() } }
                            ]
                        })),
                        "404": error_response("No such job.")
                    }
                }
            },
            "/api/v1/jobs/{id}/cancel": change("Cancels a job's latest attempt.", path_param("id", "The job id.", uuid()), "cancelled"),
            "/api/v1/jobs/{id}/retry": change("Runs a finished job again.", path_param("id", "The job id.", uuid()), "retried"),
            "/api/v1/jobs/{job}/attempts/{attempt}/steps/{step}/log": {
                "get": {
                    "summary": "A range of a step's log lines.",
                    "description": "Read by line number through the store's index: any range costs the same, whatever the log's size.",
                    "security": read_security,
                    "parameters": step_params().into_iter().chain([
                        query_param("from", "First line (1-based, default 1).", json!({ "type": "integer", "minimum": 1 })),
                        query_param("tail", "The last N lines instead of `from`.", json!({ "type": "integer", "minimum": 1 })),
                        query_param("limit", "Lines at most (1–5000, default 1000; pages are also capped at 4 MiB).", json!({ "type": "integer" }))
                    ]).collect::<Vec<_>>(),
                    "responses": {
                        "200": json_response("The lines.", json!({
                            "type": "object",
                            "properties": {
                                "from": { "type": "integer" },
                                "next": { "type": "integer", "description": "The first line after this page." },
                                "total": { "type": "integer", "description": "Lines stored so far." },
                                "complete": { "type": "boolean", "description": "The step has ended: total is final." },
                                "lost_lines": { "type": "integer", "minimum": 0, "description": "Lines the store could not keep (the data directory was full or failing); above 0 the log is incomplete and ends with a notice line saying so. Counted while the step runs and kept once it has ended; 0 for a step read from the archive only." },
                                "lines": { "type": "array", "items": { "$ref": "#/components/schemas/LogLine" } }
                            },
                            "required": ["from", "next", "total", "complete", "lost_lines", "lines"]
                        })),
                        "404": error_response("No such job attempt or step.")
                    }
                }
            },
            "/api/v1/jobs/{job}/attempts/{attempt}/steps/{step}/log/follow": {
                "get": {
                    "summary": "Follow a step's log live (Server-Sent Events).",
                    "description": "Sends every line from `from`, as soon as it is stored, in `event: lines` events: the data is a JSON array of one or more consecutive lines (`{number, at, stream, text}`, at most 1000 lines or 256 KiB an event) and the `id` is the number of the last line in it. Then `event: end` with data `{\"last\": <n>}` once the step has ended; `event: error` if the log cannot be read. A client that reconnects with `Last-Event-ID: <n>` gets exactly the lines after `n`: no gap, no duplicate.",
                    "security": read_security,
                    "parameters": step_params().into_iter().chain([
                        query_param("from", "First line (default 1); `Last-Event-ID` overrides it.", json!({ "type": "integer", "minimum": 1 })),
                        json!({ "name": "Last-Event-ID", "in": "header", "required": false, "description": "The number of the last line received (the `id` of the last event).", "schema": { "type": "integer" } })
                    ]).collect::<Vec<_>>(),
                    "responses": {
                        "200": { "description": "An event stream.", "content": { "text/event-stream": { "schema": { "type": "string" } } } },
                        "404": error_response("No such job attempt or step.")
                    }
                }
            },
            "/api/v1/jobs/{job}/attempts/{attempt}/steps/{step}/log/raw": {
                "get": {
                    "summary": "The whole log as plain text (streamed).",
                    "security": read_security,
                    "parameters": step_params(),
                    "responses": {
                        "200": { "description": "The text, one line per line.", "content": { "text/plain": { "schema": { "type": "string" } } } },
                        "404": error_response("No such job attempt or step.")
                    }
                }
            },
            "/api/v1/jobs/{job}/attempts/{attempt}/steps/{step}/log/search": {
                "get": {
                    "summary": "Lines containing a text (ASCII case-insensitive).",
                    "security": read_security,
                    "parameters": step_params().into_iter().chain([
                        json!({ "name": "q", "in": "query", "required": true, "schema": { "type": "string" } }),
                        query_param("from", "Search from this line.", json!({ "type": "integer", "minimum": 1 })),
                        query_param("limit", "Matches at most (1–1000, default 200).", json!({ "type": "integer" }))
                    ]).collect::<Vec<_>>(),
                    "responses": {
                        "200": json_response("The matching lines.", json!({
                            "type": "object",
                            "properties": { "matches": { "type": "array", "items": { "$ref": "#/components/schemas/LogLine" } } },
                            "required": ["matches"]
                        })),
                        "400": error_response("Empty query.")
                    }
                }
            },
            "/api/v1/trigger": {
                "post": {
                    "summary": "Starts runs by hand for a repository ref.",
                    "security": [{ "bearer": [] }],
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": {
                            "type": "object",
                            "additionalProperties": false,
                            "properties": {
                                "forge": { "type": "string", "enum": ["github", "gitlab", "gitea"] },
                                "repository": { "type": "string" },
                                "clone_url": { "type": "string" },
                                "ref": { "type": "string", "description": "A branch, a tag, or a full ref." },
                                "sha": { "type": "string", "description": "Default: what the ref points at now." }
                            },
                            "required": ["forge", "repository", "clone_url", "ref"]
                        } } }
                    },
                    "responses": {
                        "201": json_response("The new runs.", json!({
                            "type": "object",
                            "properties": { "runs": { "type": "array", "items": uuid() } },
                            "required": ["runs"]
                        })),
                        "400": error_response("The ref or the pipeline files cannot be read."),
                        "401": error_response("No or wrong token.")
                    }
                }
            },
            "/api/v1/deliveries/{forge}/{id}": {
                "get": {
                    "summary": "What became of a webhook delivery.",
                    "parameters": [
                        path_param("forge", "github, gitlab, gitea or forgejo.", json!({ "type": "string" })),
                        path_param("id", "The forge's delivery id.", json!({ "type": "string" }))
                    ],
                    "responses": {
                        "200": json_response("The delivery.", json!({
                            "type": "object",
                            "properties": {
                                "forge": { "type": "string" },
                                "delivery": { "type": "string" },
                                "event": { "type": "string" },
                                "received_at": { "type": "string", "format": "date-time" },
                                "state": { "type": "string", "enum": ["received", "planned", "failed"], "description": "received: not planned yet (retried with backoff while the forge or the store fails; reason says why); planned: runs started (none, with a reason, when nothing matched); failed: a permanent answer, with its reason." },
                                "reason": { "type": ["string", "null"] },
                                "runs": { "type": "array", "items": { "type": "string", "format": "uuid" } }
                            },
                            "required": ["forge", "delivery", "event", "received_at", "state", "reason", "runs"]
                        })),
                        "404": error_response("No such delivery.")
                    }
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "responses": { "200": json_response("OpenAPI 3.1.", json!({ "type": "object" })) }
                }
            }
        }
    })
}
