use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gantry_core::Secret;

use crate::support::{all_text, key, line, logs};

const TOKEN: &str = "ghp_Zx81kL0pQ2mN7vB4";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASCBKcwggSjAgEAAoIB\n-----END PRIVATE KEY-----";

fn assert_clean(text: &str) {
    assert!(!text.contains(TOKEN), "token leaked: {text}");
    for l in KEY.lines() {
        assert!(!text.contains(l), "key line leaked: {text}");
    }
    assert!(
        !text.contains(&STANDARD.encode(TOKEN)[..16]),
        "base64 leaked: {text}"
    );
}

#[tokio::test]
async fn secrets_never_reach_the_store_in_any_form() {
    let (dir, logs) = logs();
    let key = key();
    logs.set_secrets(
        key.job,
        key.attempt,
        &[Secret::new(TOKEN), Secret::new(KEY)],
    );
    let printed = [
        format!("token is {TOKEN}."),
        format!(
            "Authorization: Basic {}",
            STANDARD.encode(format!("bot:{TOKEN}"))
        ),
        STANDARD.encode(TOKEN),
        STANDARD.encode(format!("xy{TOKEN}z")),
    ];
    for p in &printed {
        logs.append(key.job, key.attempt, &line(0, p)).unwrap();
    }
    // A multi-line secret printed line by line, split across log lines.
    for l in KEY.lines() {
        logs.append(key.job, key.attempt, &line(0, &format!("  {l}")))
            .unwrap();
    }
    let text = all_text(&logs, key).await;
    assert_eq!(text.len(), printed.len() + KEY.lines().count());
    for t in &text {
        assert!(t.contains("***"), "{t}");
        assert_clean(t);
    }
    // And on disk, byte for byte.
    logs.close_attempt(key.job, key.attempt).unwrap();
    let mut raw = String::new();
    for entry in walk(dir.path()) {
        raw.push_str(&String::from_utf8_lossy(&std::fs::read(entry).unwrap()));
    }
    assert!(raw.contains("token is ***."));
    assert_clean(&raw);
}

#[tokio::test]
async fn other_attempts_are_not_masked_with_these_secrets() {
    let (_dir, logs) = logs();
    let a = key();
    let b = key();
    logs.set_secrets(a.job, a.attempt, &[Secret::new(TOKEN)]);
    logs.append(b.job, b.attempt, &line(0, "plain words"))
        .unwrap();
    assert_eq!(all_text(&logs, b).await, ["plain words"]);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
