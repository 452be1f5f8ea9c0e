//! Untrusted input held at the door: a verified delivery is still written by whoever can push
//! (a branch name, a commit message) or by whoever holds the secret (every field). Before
//! anything is stored, the fields Gantry acts on are checked — refs as git's
//! `check-ref-format` rules them (`gix-validate`), object ids as hex of a git hash's length,
//! repository names and delivery ids by charset and length, clone URLs by scheme (no `file://`,
//! `ext::` or option-looking URLs) — and refused with the field and the reason (400), while free
//! text (commit message, pull request title, actor) is capped where it is kept.

use bstr::BStr;
use gantry_core::Trigger;

use crate::webhook::{Delivery, Incoming, ParseError};

/// The longest delivery id kept: forges send UUIDs (36 bytes).
pub const MAX_DELIVERY_ID: usize = 128;
/// The longest full ref accepted (`refs/heads/…`); git has no limit, but forges and file systems
/// do, and one megabyte of ref is never meant.
pub const MAX_REF: usize = 1024;
/// The longest repository full name (`group/subgroup/name`).
pub const MAX_REPO_NAME: usize = 512;
/// The longest clone URL.
pub const MAX_URL: usize = 2048;
/// What is kept of a commit message: its first 4 KiB.
pub const MAX_MESSAGE: usize = 4096;
/// What is kept of a pull request title or an actor's name.
pub const MAX_SHORT_TEXT: usize = 256;

fn invalid(field: &'static str, reason: impl Into<String>) -> ParseError {
    ParseError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A value shown in an error: control characters escaped, at most 80 characters.
fn shown(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(80)
        .collect::<String>()
        .escape_debug()
        .collect();
    if value.chars().count() > 80 {
        out.push('…');
    }
    format!("\"{out}\"")
}

/// Checks every field Gantry acts on and caps the free text; the first bad field is the error.
pub(crate) fn delivery(delivery: &mut Delivery) -> Result<(), ParseError> {
    if let Some(id) = &delivery.id {
        delivery_id(id)?;
    }
    if let Incoming::Trigger { trigger, compare } = &mut delivery.incoming {
        self::trigger(trigger)?;
        if let Some(c) = compare {
            object_id("before", &c.before)?;
            object_id("after", &c.after)?;
        }
    }
    Ok(())
}

pub(crate) fn delivery_id(id: &str) -> Result<(), ParseError> {
    if id.is_empty() || id.len() > MAX_DELIVERY_ID {
        return Err(invalid(
            "delivery id",
            format!("{} bytes long; at most {MAX_DELIVERY_ID}", id.len()),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(invalid(
            "delivery id",
            format!(
                "{} holds {c:?}: only letters, digits and - _ . :",
                shown(id)
            ),
        ));
    }
    Ok(())
}

/// Checks a trigger's fields (refs, commit ids, repository, clone URL) and caps its free text.
pub fn trigger(t: &mut Trigger) -> Result<(), ParseError> {
    full_ref("ref", &t.git_ref)?;
    object_id("sha", &t.sha)?;
    if let Some(before) = &t.before {
        object_id("before", before)?;
    }
    repo_name(&t.repo.full_name)?;
    clone_url(&t.repo.clone_url)?;
    // Shown as a link: anything but a web address is dropped, never refused.
    if t.repo.web_url.as_deref().is_some_and(|u| !is_web_url(u)) {
        t.repo.web_url = None;
    }
    if let Some(branch) = &t.repo.default_branch
        && short_ref("default branch", branch).is_err()
    {
        t.repo.default_branch = None;
    }
    if let Some(pr) = &mut t.pull_request {
        short_ref("pull request head", &pr.head_ref)?;
        short_ref("pull request base", &pr.base_ref)?;
        cap(&mut pr.title, MAX_SHORT_TEXT);
    }
    cap(&mut t.message, MAX_MESSAGE);
    cap(&mut t.actor, MAX_SHORT_TEXT);
    if let Some(paths) = &mut t.changed_paths {
        // A path git could not have: the list says nothing reliable, so it is computed instead.
        if paths
            .iter()
            .any(|p| p.is_empty() || p.len() > 4096 || p.contains('\0'))
        {
            t.changed_paths = None;
        }
    }
    Ok(())
}

fn cap(text: &mut Option<String>, max: usize) {
    if let Some(s) = text
        && s.len() > max
    {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let kept = s.len();
        s.truncate(end);
        s.push_str(&format!("… [cut: {kept} bytes]"));
    }
}

/// A full ref such as `refs/heads/main`, by git's rules.
fn full_ref(field: &'static str, value: &str) -> Result<(), ParseError> {
    if value.len() > MAX_REF {
        return Err(invalid(
            field,
            format!("{} bytes long; at most {MAX_REF}", value.len()),
        ));
    }
    if !value.starts_with("refs/") {
        return Err(invalid(
            field,
            format!("{} does not start with refs/", shown(value)),
        ));
    }
    gix_validate::reference::name(BStr::new(value))
        .map(|_| ())
        .map_err(|e| invalid(field, format!("{}: {e}", shown(value))))
}

/// A branch name without `refs/heads/`.
fn short_ref(field: &'static str, value: &str) -> Result<(), ParseError> {
    if value.len() > MAX_REF {
        return Err(invalid(
            field,
            format!("{} bytes long; at most {MAX_REF}", value.len()),
        ));
    }
    gix_validate::reference::name_partial(BStr::new(value))
        .map(|_| ())
        .map_err(|e| invalid(field, format!("{}: {e}", shown(value))))
}

/// A git object id: 40 (SHA-1) or 64 (SHA-256) hex digits.
fn object_id(field: &'static str, value: &str) -> Result<(), ParseError> {
    if matches!(value.len(), 40 | 64) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{} is not a commit id (40 or 64 hex digits)", shown(value)),
        ))
    }
}

/// A repository's full name: `owner/name`, GitLab `group/subgroup/name`: segments of letters, digits, `-`, `_`, `.`.
pub fn repo_name(value: &str) -> Result<(), ParseError> {
    let field = "repository full name";
    if value.len() > MAX_REPO_NAME {
        return Err(invalid(
            field,
            format!("{} bytes long; at most {MAX_REPO_NAME}", value.len()),
        ));
    }
    let segments: Vec<&str> = value.split('/').collect();
    let good = |s: &&str| {
        !s.is_empty()
            && *s != "."
            && *s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if segments.len() < 2 || !segments.iter().all(good) {
        return Err(invalid(
            field,
            format!(
                "{} is not owner/name (letters, digits, - _ . in each part)",
                shown(value)
            ),
        ));
    }
    Ok(())
}

fn is_web_url(value: &str) -> bool {
    url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.has_host())
}

/// Where a checkout fetches from: `https://`, `http://`, `ssh://`, `git://` or `user@host:path`,
/// with a host; never a local path, `file://`, a remote helper (`ext::`, `fd::`) or anything git
/// could read as an option.
pub fn clone_url(value: &str) -> Result<(), ParseError> {
    let field = "clone URL";
    if value.len() > MAX_URL {
        return Err(invalid(
            field,
            format!("{} bytes long; at most {MAX_URL}", value.len()),
        ));
    }
    if value.starts_with('-') || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            field,
            format!(
                "{} holds a space, a control character or a leading -",
                shown(value)
            ),
        ));
    }
    if value.contains("::") {
        return Err(invalid(
            field,
            format!("{} names a git remote helper", shown(value)),
        ));
    }
    if value.contains("://") {
        let url =
            url::Url::parse(value).map_err(|e| invalid(field, format!("{}: {e}", shown(value))))?;
        if !matches!(url.scheme(), "https" | "http" | "ssh" | "git") {
            return Err(invalid(
                field,
                format!(
                    "{}: scheme {}:// is not fetched (https, http, ssh or git only)",
                    shown(value),
                    url.scheme()
                ),
            ));
        }
        if !url.has_host() || url.host_str().is_some_and(str::is_empty) {
            return Err(invalid(field, format!("{} has no host", shown(value))));
        }
        if url.password().is_some() {
            return Err(invalid(field, "holds a password"));
        }
        return Ok(());
    }
    // scp-like: [user@]host:path, with a host of letters, digits, `-` and `.`.
    let host = value
        .split_once(':')
        .map(|(before, _)| before.rsplit_once('@').map_or(before, |(_, h)| h));
    match host {
        Some(h)
            if !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')) =>
        {
            Ok(())
        }
        _ => Err(invalid(
            field,
            format!(
                "{} is not a URL Gantry fetches from (https://, http://, ssh://, git:// or \
                 user@host:path)",
                shown(value)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<(), ParseError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn refs_follow_gits_rules_and_a_length() {
        assert!(full_ref("ref", "refs/heads/feature/x-1.2").is_ok());
        assert!(full_ref("ref", "refs/tags/v1.0.0").is_ok());
        assert!(full_ref("ref", "refs/pull/7/head").is_ok());
        for bad in [
            "refs/heads/a\nb",
            "refs/heads/a\0b",
            "refs/heads/a..b",
            "refs/heads/a b",
            "refs/heads/x.lock",
            "refs/heads/",
            "main",
        ] {
            let r = reason(full_ref("ref", bad));
            assert!(r.starts_with("ref: "), "{bad:?}: {r}");
        }
        let long = format!("refs/heads/{}", "a".repeat(1 << 20));
        assert!(reason(full_ref("ref", &long)).contains("at most 1024"));
        assert!(reason(full_ref("ref", "refs/heads/a\nb")).contains("\\n"));
    }

    #[test]
    fn clone_urls_are_remote_and_plain() {
        for good in [
            "https://github.com/acme/app.git",
            "http://127.0.0.1:3000/acme/app.git",
            "ssh://git@gitlab.example:2222/acme/app.git",
            "git://127.0.0.1:9418/app.git",
            "git@github.com:acme/app.git",
        ] {
            assert!(clone_url(good).is_ok(), "{good}");
        }
        for bad in [
            "file:///srv/git/secret.git",
            "/srv/git/secret.git",
            "./secret",
            "ext::sh -c touch% /tmp/pwned",
            "fd::3",
            "--upload-pack=touch /tmp/pwned",
            "https://user:pass@github.com/acme/app.git",
            "https://github.com/acme/app.git\n",
            "ftp://example.com/app.git",
        ] {
            assert!(clone_url(bad).is_err(), "{bad}");
        }
        assert!(reason(clone_url("file:///x")).contains("scheme file://"));
    }

    #[test]
    fn ids_and_names_are_checked() {
        assert!(delivery_id("72d3162e-cc78-11e3-81ab-4c9367dc0958").is_ok());
        assert!(delivery_id(&"a".repeat(65 * 1024)).is_err());
        assert!(delivery_id("a\nb").is_err());
        assert!(object_id("sha", &"a".repeat(40)).is_ok());
        assert!(object_id("sha", &"0".repeat(64)).is_ok());
        assert!(object_id("sha", "HEAD").is_err());
        assert!(object_id("sha", &"g".repeat(40)).is_err());
        assert!(repo_name("acme/app").is_ok());
        assert!(repo_name("group/sub.group/app_1").is_ok());
        for bad in ["app", "acme/../etc", "acme/a b", "/acme/app", "acme//app"] {
            assert!(repo_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_text_is_cut_at_a_character_with_what_was_cut() {
        let mut message = Some("é".repeat(10_000));
        cap(&mut message, MAX_MESSAGE);
        let m = message.unwrap();
        assert!(m.len() < MAX_MESSAGE + 40, "{}", m.len());
        assert!(
            m.ends_with("… [cut: 20000 bytes]"),
            "{}",
            &m[m.len() - 30..]
        );
        let mut short = Some("fix".to_owned());
        cap(&mut short, MAX_MESSAGE);
        assert_eq!(short.as_deref(), Some("fix"));
    }
}
