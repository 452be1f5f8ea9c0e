//! Gitea and Forgejo deliveries: signatures (either header family), push, tag push and pull
//! requests.

use gantry_core::{Event, ForgeKind};
use gantry_forge::{
    CompareReason, Incoming, VerifyError, WebhookError, WebhookSecrets, gitea, receive,
};

use crate::support::{fixture, headers, ignored, sign, trigger};

const SECRET: &str = "gantry-gitea-test";

fn deliver(event: &str, file: &str) -> Result<gantry_forge::Delivery, WebhookError> {
    let body = fixture("gitea", file);
    let sig = sign(SECRET, &body);
    let h = headers(&[
        ("x-gitea-event", event),
        ("x-gitea-delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
        ("x-gitea-signature", &sig),
    ]);
    gitea::receive(&h, &body, &WebhookSecrets::global([SECRET]))
}

#[test]
fn documented_signatures_verify_with_gitea_and_forgejo_headers() {
    #[derive(serde::Deserialize)]
    struct Sigs {
        secret: String,
        deliveries: Vec<Sig>,
    }
    #[derive(serde::Deserialize)]
    struct Sig {
        file: String,
        event: String,
        signature: String,
    }
    let sigs: Sigs = serde_json::from_slice(&fixture("gitea", "signatures.json")).unwrap();
    let secrets = WebhookSecrets::global([sigs.secret.as_str()]);
    for s in sigs.deliveries {
        let body = fixture("gitea", &s.file);
        let gitea_headers = headers(&[
            ("x-gitea-event", &s.event),
            ("x-gitea-delivery", "g-1"),
            ("x-gitea-signature", &s.signature),
        ]);
        let d = receive(ForgeKind::Gitea, &gitea_headers, &body, &secrets).unwrap();
        assert_eq!(d.id.as_deref(), Some("g-1"));
        let forgejo_headers = headers(&[
            ("x-forgejo-event", &s.event),
            ("x-forgejo-delivery", "f-1"),
            ("x-forgejo-signature", &s.signature),
        ]);
        let d = receive(ForgeKind::Gitea, &forgejo_headers, &body, &secrets).unwrap();
        assert_eq!(d.id.as_deref(), Some("f-1"));
        assert_eq!(d.event, s.event);
    }
}

#[test]
fn a_push_lists_its_changed_paths() {
    let d = deliver("push", "push.json").unwrap();
    assert_eq!(d.forge, ForgeKind::Gitea);
    let t = trigger(&d);
    assert_eq!(t.event, Event::Push);
    assert_eq!(t.repo.full_name, "gitea/webhooks");
    assert_eq!(
        t.repo.clone_url,
        "https://gitea.example.com/gitea/webhooks.git"
    );
    assert_eq!(t.branch.as_deref(), Some("develop"));
    assert_eq!(t.sha, "bffeb74224043ba2feb48d137756c8a9331c449a");
    assert_eq!(t.actor.as_deref(), Some("gitea"));
    assert_eq!(t.message.as_deref(), Some("Webhooks Yay!\n"));
    assert_eq!(
        t.changed_paths.as_deref().unwrap(),
        [".gantry/ci.yaml", "docs/old.md", "src/lib.rs"]
    );
}

#[test]
fn a_push_with_more_commits_than_listed_asks_for_a_compare() {
    let d = deliver("push", "push-truncated.json").unwrap();
    let Incoming::Trigger { trigger, compare } = &d.incoming else {
        panic!("{d:?}")
    };
    assert_eq!(trigger.changed_paths, None);
    assert_eq!(compare.as_ref().unwrap().reason, CompareReason::Truncated);
}

#[test]
fn tags_trigger_and_deletions_start_nothing() {
    let d = deliver("push", "push-tag.json").unwrap();
    let t = trigger(&d);
    assert_eq!((t.event, t.tag.as_deref()), (Event::Tag, Some("v0.3.0")));
    let d = deliver("push", "push-branch-deleted.json").unwrap();
    assert_eq!(ignored(&d), "branch old was deleted");
    let d = deliver("delete", "delete.json").unwrap();
    assert!(ignored(&d).starts_with("delete events start nothing"));
}

#[test]
fn pull_requests() {
    let d = deliver("pull_request", "pull_request-opened.json").unwrap();
    let t = trigger(&d);
    assert_eq!(t.event, Event::PullRequest);
    assert_eq!(t.git_ref, "refs/pull/4/head");
    assert_eq!(t.sha, "8d1c6a5f0e3b2a4c9d7e6f5a4b3c2d1e0f9a8b7c");
    let pr = t.pull_request.as_ref().unwrap();
    assert_eq!(
        (pr.head_ref.as_str(), pr.base_ref.as_str()),
        ("speed-up", "main")
    );
    assert!(!pr.from_fork);
    assert_eq!(pr.title.as_deref(), Some("Speed up the build"));
    assert_eq!(t.actor.as_deref(), Some("alice"));

    let d = deliver("pull_request", "pull_request-synchronized-fork.json").unwrap();
    let t = trigger(&d);
    assert!(t.pull_request.as_ref().unwrap().from_fork);
    assert_eq!(t.sha, "c0ffee5f0e3b2a4c9d7e6f5a4b3c2d1e0f9a8b7c");

    let d = deliver("pull_request", "pull_request-closed.json").unwrap();
    assert_eq!(ignored(&d), "pull request #4 was closed");
}

#[test]
fn bad_signatures_are_refused() {
    let body = fixture("gitea", "push.json");
    let secrets = WebhookSecrets::global([SECRET]);
    let refuse = |h: &[(&str, &str)]| match gitea::receive(&headers(h), &body, &secrets) {
        Err(WebhookError::Unauthorized(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refuse(&[("x-gitea-event", "push")]),
        VerifyError::MissingHeader("X-Gitea-Signature")
    );
    let good = sign(SECRET, &body);
    assert_eq!(
        refuse(&[("x-gitea-signature", &good[..40])]),
        VerifyError::MalformedSignature("truncated")
    );
    assert_eq!(
        refuse(&[("x-gitea-signature", &format!("sha256={good}"))]),
        VerifyError::MalformedSignature("not hex")
    );
    assert_eq!(
        refuse(&[("x-gitea-signature", &sign("wrong", &body))]),
        VerifyError::Mismatch
    );
}

/// Gitea and Forgejo can send the JSON form-encoded (`payload=…`); they sign the JSON itself,
/// not the form, so the signature is checked over the `payload` field.
#[test]
fn a_form_encoded_delivery_is_verified_over_its_payload_and_parsed_like_json() {
    let json = fixture("gitea", "push.json");
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&json).unwrap())
        .finish();
    let secrets = WebhookSecrets::global([SECRET]);
    let with = |signature: &str| {
        headers(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("x-forgejo-event", "push"),
            ("x-forgejo-delivery", "f-form"),
            ("x-forgejo-signature", signature),
        ])
    };
    let delivered = gitea::receive(&with(&sign(SECRET, &json)), form.as_bytes(), &secrets).unwrap();
    let as_json = deliver("push", "push.json").unwrap();
    assert_eq!(delivered.incoming, as_json.incoming);
    assert_eq!(delivered.id.as_deref(), Some("f-form"));

    // A signature over the form (not what Gitea signs) or by another secret is refused.
    for signature in [sign(SECRET, form.as_bytes()), sign("another", &json)] {
        match gitea::receive(&with(&signature), form.as_bytes(), &secrets) {
            Err(WebhookError::Unauthorized(VerifyError::Mismatch)) => {}
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }
    // A form without the field has nothing to verify: a bad request.
    let err = gitea::receive(&with(&sign(SECRET, b"other=1")), b"other=1", &secrets).unwrap_err();
    assert_eq!(err.http_status(), 400);
}
