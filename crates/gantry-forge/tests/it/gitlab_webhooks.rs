//! GitLab deliveries: the shared token, push, tag push and merge requests.

use gantry_core::{Event, ForgeKind};
use gantry_forge::{CompareReason, Incoming, VerifyError, WebhookError, WebhookSecrets, gitlab};

use crate::support::{fixture, headers, ignored, trigger};

const TOKEN: &str = "gantry-gitlab-token";

fn deliver(event: &str, file: &str) -> Result<gantry_forge::Delivery, WebhookError> {
    let h = headers(&[
        ("x-gitlab-event", event),
        ("x-gitlab-token", TOKEN),
        (
            "x-gitlab-event-uuid",
            "13792a34-cac6-4fda-95a8-c58e00a3954e",
        ),
        (
            "x-gitlab-webhook-uuid",
            "6f3fdb3c-4a36-4ed4-a0a7-9b7b0c5d2b8e",
        ),
    ]);
    gitlab::receive(
        &h,
        &fixture("gitlab", file),
        &WebhookSecrets::global([TOKEN]),
    )
}

#[test]
fn a_push_lists_its_changed_paths() {
    let d = deliver("Push Hook", "push.json").unwrap();
    assert_eq!(d.forge, ForgeKind::Gitlab);
    assert_eq!(
        d.id.as_deref(),
        Some("13792a34-cac6-4fda-95a8-c58e00a3954e")
    );
    assert_eq!(d.event, "Push Hook");
    let t = trigger(&d);
    assert_eq!(t.event, Event::Push);
    assert_eq!(t.repo.full_name, "mike/diaspora");
    assert_eq!(
        t.repo.clone_url,
        "https://gitlab.example.com/mike/diaspora.git"
    );
    assert_eq!(t.repo.default_branch.as_deref(), Some("main"));
    assert_eq!(t.branch.as_deref(), Some("main"));
    assert_eq!(t.sha, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    assert_eq!(
        t.before.as_deref(),
        Some("95790bf891e76fee5e1747ab589903a6a1f80f22")
    );
    assert_eq!(t.actor.as_deref(), Some("jsmith"));
    assert_eq!(t.message.as_deref(), Some("Fix the build script\n"));
    assert_eq!(
        t.changed_paths.as_deref().unwrap(),
        [".gantry.yaml", "README.md", "ci/build.sh", "ci/old.sh"]
    );
}

#[test]
fn a_push_with_more_commits_than_listed_asks_for_a_compare() {
    let d = deliver("Push Hook", "push-truncated.json").unwrap();
    let Incoming::Trigger { trigger, compare } = &d.incoming else {
        panic!("{d:?}")
    };
    assert_eq!(trigger.changed_paths, None);
    let compare = compare.as_ref().unwrap();
    assert_eq!(compare.reason, CompareReason::Truncated);
    assert_eq!(compare.before, "95790bf891e76fee5e1747ab589903a6a1f80f22");
}

#[test]
fn a_deleted_branch_starts_nothing() {
    let d = deliver("Push Hook", "push-branch-deleted.json").unwrap();
    assert_eq!(ignored(&d), "branch feature/old was deleted");
}

#[test]
fn a_tag_push_starts_a_tag_run() {
    let d = deliver("Tag Push Hook", "tag_push.json").unwrap();
    let t = trigger(&d);
    assert_eq!(t.event, Event::Tag);
    assert_eq!(t.tag.as_deref(), Some("v1.0.0"));
    assert_eq!(t.sha, "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7");
    assert_eq!(t.before, None);
}

#[test]
fn merge_requests_open_and_new_commits_trigger() {
    let d = deliver("Merge Request Hook", "merge_request-open.json").unwrap();
    let t = trigger(&d);
    assert_eq!(t.event, Event::PullRequest);
    assert_eq!(t.git_ref, "refs/merge-requests/1/head");
    assert_eq!(t.sha, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
    let mr = t.pull_request.as_ref().unwrap();
    assert_eq!(
        (mr.number, mr.head_ref.as_str(), mr.base_ref.as_str()),
        (1, "ms-viewport", "main")
    );
    assert!(!mr.from_fork);
    assert_eq!(t.actor.as_deref(), Some("root"));

    let d = deliver("Merge Request Hook", "merge_request-update-fork.json").unwrap();
    let t = trigger(&d);
    assert!(t.pull_request.as_ref().unwrap().from_fork);
    assert_eq!(t.repo.full_name, "mike/diaspora", "the target project");
    assert_eq!(
        t.before.as_deref(),
        Some("95790bf891e76fee5e1747ab589903a6a1f80f22")
    );
}

#[test]
fn merge_request_updates_without_commits_and_closes_start_nothing() {
    let d = deliver("Merge Request Hook", "merge_request-update-labels.json").unwrap();
    assert_eq!(ignored(&d), "merge request updated without new commits");
    let d = deliver("Merge Request Hook", "merge_request-close.json").unwrap();
    assert_eq!(ignored(&d), "merge request !1 was closed");
}

#[test]
fn tokens_are_checked_before_parsing() {
    let body = b"not json";
    let check = |h: &[(&str, &str)], secrets: &WebhookSecrets| match gitlab::receive(
        &headers(h),
        body,
        secrets,
    ) {
        Err(WebhookError::Unauthorized(e)) => e,
        other => panic!("{other:?}"),
    };
    let secrets = WebhookSecrets::global(["old", TOKEN]);
    assert_eq!(
        check(&[("x-gitlab-event", "Push Hook")], &secrets),
        VerifyError::MissingHeader("X-Gitlab-Token (or webhook-signature)")
    );
    assert_eq!(
        check(&[("x-gitlab-token", "wrong")], &secrets),
        VerifyError::Mismatch
    );
    assert_eq!(
        check(&[("x-gitlab-token", TOKEN)], &WebhookSecrets::default()),
        VerifyError::NoSecretConfigured
    );
    // The right token (either of two) gets as far as the JSON.
    for token in ["old", TOKEN] {
        let err =
            gitlab::receive(&headers(&[("x-gitlab-token", token)]), body, &secrets).unwrap_err();
        assert_eq!(err.http_status(), 400, "{err}");
    }
}

#[test]
fn a_group_scoped_token_covers_the_group_s_projects_only() {
    let body = fixture("gitlab", "push.json");
    let h = headers(&[
        ("x-gitlab-event", "Push Hook"),
        ("x-gitlab-token", "mike-token"),
    ]);
    let ok = WebhookSecrets::default().with_scoped("mike", "mike-token");
    assert!(gitlab::receive(&h, &body, &ok).is_ok());
    let other = WebhookSecrets::default().with_scoped("someone-else", "mike-token");
    assert!(matches!(
        gitlab::receive(&h, &body, &other),
        Err(WebhookError::Unauthorized(
            VerifyError::SecretNotForRepository(_)
        ))
    ));
}

/// Deliveries signed with a GitLab signing token (Standard Webhooks), as the `standardwebhooks`
/// reference library signs them (tests/node/gen-gitlab-fixtures.mjs).
#[derive(serde::Deserialize)]
struct Signed {
    secret: String,
    id: String,
    timestamp: i64,
    deliveries: Vec<SignedDelivery>,
}

#[derive(serde::Deserialize)]
struct SignedDelivery {
    file: String,
    signature: String,
}

fn signed_headers(s: &Signed, signature: &str, event: &str) -> http::HeaderMap {
    headers(&[
        ("x-gitlab-event", event),
        ("x-gitlab-event-uuid", "e-signed"),
        ("webhook-id", &s.id),
        ("webhook-timestamp", &s.timestamp.to_string()),
        ("webhook-signature", signature),
    ])
}

#[test]
fn a_signing_token_verifies_as_standard_webhooks_signs_it_and_refuses_replays() {
    let s: Signed = serde_json::from_slice(&fixture("gitlab", "signing-token.json")).unwrap();
    // A signing token and an old secret token side by side, as during a migration.
    let secrets = WebhookSecrets::global([s.secret.as_str(), TOKEN]);
    let at = |now: i64, signature: &str, file: &str| {
        gitlab::receive_at(
            &signed_headers(&s, signature, "Push Hook"),
            &fixture("gitlab", file),
            &secrets,
            now,
        )
    };
    for d in &s.deliveries {
        let delivered = at(s.timestamp + 30, &d.signature, &d.file).unwrap();
        assert_eq!(delivered.id.as_deref(), Some("e-signed"));
        // Several signatures (a rotation): any valid one is enough.
        let several = format!(
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {}",
            d.signature
        );
        assert!(at(s.timestamp - 30, &several, &d.file).is_ok());
    }
    let push = &s.deliveries[0];
    let refused = |r: Result<gantry_forge::Delivery, WebhookError>| match r {
        Err(WebhookError::Unauthorized(e)) => e,
        other => panic!("expected 401, got {other:?}"),
    };
    // A replay ten minutes later, or a timestamp from the future.
    assert!(matches!(
        refused(at(s.timestamp + 600, &push.signature, &push.file)),
        VerifyError::StaleTimestamp(600)
    ));
    assert!(matches!(
        refused(at(s.timestamp - 600, &push.signature, &push.file)),
        VerifyError::StaleTimestamp(-600)
    ));
    // Another body under the same signature, and another key.
    assert_eq!(
        refused(at(s.timestamp, &push.signature, "tag_push.json")),
        VerifyError::Mismatch
    );
    let other = WebhookSecrets::global(["whsec_b3RoZXItb3RoZXItb3RoZXItb3RoZXIta2V5"]);
    assert_eq!(
        refused(gitlab::receive_at(
            &signed_headers(&s, &push.signature, "Push Hook"),
            &fixture("gitlab", &push.file),
            &other,
            s.timestamp,
        )),
        VerifyError::Mismatch
    );
    // The secret token alone never verifies a signature, nor does a malformed one.
    let token_only = WebhookSecrets::global([TOKEN]);
    assert_eq!(
        refused(gitlab::receive_at(
            &signed_headers(&s, &push.signature, "Push Hook"),
            &fixture("gitlab", &push.file),
            &token_only,
            s.timestamp,
        )),
        VerifyError::Mismatch
    );
    assert!(matches!(
        refused(at(s.timestamp, "v1,not-base64!", &push.file)),
        VerifyError::MalformedSignature(_)
    ));
    // Without webhook-id the signature cannot be checked.
    let mut h = signed_headers(&s, &push.signature, "Push Hook");
    h.remove("webhook-id");
    assert_eq!(
        refused(gitlab::receive_at(
            &h,
            &fixture("gitlab", &push.file),
            &secrets,
            s.timestamp
        )),
        VerifyError::MissingHeader("webhook-id")
    );
    // The secret token still works for hooks that have no signing token.
    assert!(deliver("Push Hook", "push.json").is_ok());
}
