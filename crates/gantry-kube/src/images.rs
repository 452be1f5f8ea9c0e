//! Image references as container runtimes read them, and their rewriting for mirrors
//! ([`KubeConfig::image_mirrors`](crate::KubeConfig::image_mirrors)).

use crate::config::ImageMirror;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";

/// The fully qualified form of an image reference, as Docker and containerd normalise it
/// (`splitDockerDomain` in distribution/reference): a first path component is a registry only
/// when it holds a `.` or a `:`, is `localhost`, or has upper-case letters; otherwise the
/// registry is `docker.io`, and a single-component name there is an official image under
/// `library/`. `index.docker.io` is `docker.io`. Tags and digests are kept as they are (no
/// `:latest` is added).
///
/// `rust:1.95` → `docker.io/library/rust:1.95`, `user/app` → `docker.io/user/app`,
/// `ghcr.io/o/app` and `localhost:5000/app` stay as they are.
pub fn normalize(reference: &str) -> String {
    let (domain, rest) = match reference.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_DOMAIN, reference),
    };
    let domain = if domain == LEGACY_DEFAULT_DOMAIN {
        DEFAULT_DOMAIN
    } else {
        domain
    };
    if domain == DEFAULT_DOMAIN && !rest.contains('/') {
        format!("{domain}/{OFFICIAL_PREFIX}{rest}")
    } else {
        format!("{domain}/{rest}")
    }
}

/// `reference` for a cluster with these mirrors: the first rule whose `from` is a prefix of the
/// normalised reference replaces that prefix by its `to`. Without a matching rule the reference
/// is left exactly as written.
pub fn rewrite(reference: &str, mirrors: &[ImageMirror]) -> String {
    if mirrors.is_empty() {
        return reference.to_owned();
    }
    let normalized = normalize(reference);
    mirrors
        .iter()
        .find_map(|m| {
            normalized
                .strip_prefix(m.from.as_str())
                .map(|rest| format!("{}{rest}", m.to))
        })
        .unwrap_or_else(|| reference.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_as_docker_and_containerd_do() {
        for (reference, normalized) in [
            ("alpine", "docker.io/library/alpine"),
            ("alpine:3.22", "docker.io/library/alpine:3.22"),
            ("rust:1.95", "docker.io/library/rust:1.95"),
            (
                "alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "docker.io/library/alpine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
            ("user/app", "docker.io/user/app"),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("library/alpine", "docker.io/library/alpine"),
            ("docker.io/alpine", "docker.io/library/alpine"),
            (
                "docker.io/library/alpine:3.22",
                "docker.io/library/alpine:3.22",
            ),
            ("index.docker.io/alpine", "docker.io/library/alpine"),
            ("index.docker.io/user/app", "docker.io/user/app"),
            (
                "ghcr.io/osscontainertools/kaniko:v1.26.0",
                "ghcr.io/osscontainertools/kaniko:v1.26.0",
            ),
            (
                "registry.example.com/a/b/c:1",
                "registry.example.com/a/b/c:1",
            ),
            ("localhost/app", "localhost/app"),
            ("localhost:5000/app:dev", "localhost:5000/app:dev"),
            ("myregistry:5000/app", "myregistry:5000/app"),
            ("Registry/app", "Registry/app"),
            (
                "quay.io/prometheus/prometheus",
                "quay.io/prometheus/prometheus",
            ),
            ("gcr.io/distroless/static", "gcr.io/distroless/static"),
            ("a/b/c", "docker.io/a/b/c"),
        ] {
            assert_eq!(normalize(reference), normalized, "{reference}");
        }
    }

    fn mirror(from: &str, to: &str) -> ImageMirror {
        ImageMirror {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn the_first_matching_prefix_wins_and_others_are_left_as_written() {
        let mirrors = [
            mirror("docker.io/library/", "mirror.internal/hub/library/"),
            mirror("docker.io/", "mirror.internal/hub/"),
            mirror("ghcr.io/osscontainertools/", "mirror.internal/kaniko/"),
        ];
        for (reference, rewritten) in [
            ("alpine:3.22", "mirror.internal/hub/library/alpine:3.22"),
            ("rust:1.95", "mirror.internal/hub/library/rust:1.95"),
            (
                "docker.io/library/postgres:17",
                "mirror.internal/hub/library/postgres:17",
            ),
            ("user/app", "mirror.internal/hub/user/app"),
            (
                "docker.io/alpine/git:2.49.1",
                "mirror.internal/hub/alpine/git:2.49.1",
            ),
            (
                "ghcr.io/osscontainertools/kaniko:v1.26.0",
                "mirror.internal/kaniko/kaniko:v1.26.0",
            ),
            // No rule: exactly as written, not normalised.
            (
                "ghcr.io/gantry-ci/gitops-helper:0.1.0",
                "ghcr.io/gantry-ci/gitops-helper:0.1.0",
            ),
            ("localhost:5000/app", "localhost:5000/app"),
        ] {
            assert_eq!(rewrite(reference, &mirrors), rewritten, "{reference}");
        }
        // Order matters: the broader rule first takes everything of docker.io.
        let broad_first = [
            mirror("docker.io/", "a.internal/"),
            mirror("docker.io/library/", "b.internal/"),
        ];
        assert_eq!(rewrite("alpine", &broad_first), "a.internal/library/alpine");
        assert_eq!(rewrite("alpine:3.22", &[]), "alpine:3.22");
    }

    #[test]
    fn a_prefix_is_a_plain_string_prefix() {
        // Without a trailing `/`, a rule also matches longer names: documented.
        let mirrors = [mirror("docker.io/library/alpine", "m.internal/alpine")];
        assert_eq!(rewrite("alpine:3.22", &mirrors), "m.internal/alpine:3.22");
        assert_eq!(
            rewrite("alpine-extra:1", &mirrors),
            "m.internal/alpine-extra:1"
        );
    }
}
