//! Small value languages inside the pipeline language: durations, Kubernetes quantities, names.

use std::time::Duration;

/// The longest timeout a job or step may ask for.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// `90s`, `20m`, `1h30m`, `1h 30m`, `2h`. Units: `h`, `m`, `s`; at least one part; positive.
/// At most 7 days. The reason is the error, ready to show.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || {
        format!(
            "invalid duration `{text}`: expected a number with a unit, like `90s`, `20m` or `1h30m`"
        )
    };
    let mut total: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(expected());
    }
    let mut last_unit = 0u8;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err(expected());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| expected())?;
        rest = &rest[digits..];
        let (factor, rank) = match rest.chars().next() {
            Some('h') => (3600, 1),
            Some('m') => (60, 2),
            Some('s') => (1, 3),
            _ => return Err(expected()),
        };
        if rank <= last_unit {
            return Err(format!(
                "invalid duration `{text}`: give hours, minutes, seconds in that order, each once"
            ));
        }
        last_unit = rank;
        rest = rest[1..].trim_start();
        total = total.saturating_add(n.saturating_mul(factor));
    }
    let d = Duration::from_secs(total);
    if d.is_zero() {
        return Err(format!(
            "invalid duration `{text}`: a timeout must be longer than 0s"
        ));
    }
    if d > MAX_TIMEOUT {
        return Err(format!("invalid duration `{text}`: at most 7 days (168h)"));
    }
    Ok(d)
}

/// A Kubernetes quantity: `2`, `500m`, `1.5`, `4Gi`, `512Mi`, `1e3`. Must be more than zero.
pub(crate) fn check_quantity(text: &str) -> Result<(), String> {
    let err = || {
        format!(
            "invalid quantity `{text}`: expected a Kubernetes quantity like `2`, `500m`, `4Gi` or `512Mi`"
        )
    };
    let s = text.strip_prefix('+').unwrap_or(text);
    let number_len = s
        .char_indices()
        .take_while(|(_, c)| c.is_ascii_digit() || *c == '.')
        .count();
    let (number, suffix) = s.split_at(number_len);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(err());
    }
    let ok_suffix =
        matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        ) || (suffix.len() > 1 && (suffix.starts_with('e') || suffix.starts_with('E')) && {
            let exp = &suffix[1..];
            let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            !exp.is_empty() && exp.len() <= 3 && exp.chars().all(|c| c.is_ascii_digit())
        });
    if !ok_suffix {
        return Err(err());
    }
    if number.chars().all(|c| c == '0' || c == '.') {
        return Err(format!("invalid quantity `{text}`: must be more than zero"));
    }
    Ok(())
}

/// Job names: letters, digits, `-`, `_`; starting with a letter or digit; at most 63 characters
/// (they become Kubernetes label values).
pub(crate) fn check_job_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid job name `{name}`: use letters, digits, `-` and `_`, start with a letter or digit, at most 63 characters"
        ))
    }
}

/// Service names become container names and host aliases: DNS labels.
pub(crate) fn check_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Kubernetes Secret names are DNS subdomains.
pub(crate) fn check_secret_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty() && name.len() <= 253 && name.split('.').all(check_dns_label);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid secret name `{name}`: Kubernetes Secret names use lower-case letters, digits, `-` and `.`, and start and end with a letter or digit"
        ))
    }
}

/// Keys within a Secret.
pub(crate) fn check_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Environment variable names: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `config-repo-token` → `CONFIG_REPO_TOKEN`.
pub(crate) fn env_name_for_secret(secret: &str) -> String {
    secret
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// Matrix keys: like environment names, plus `-`.
pub(crate) fn is_matrix_key(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("20m"), Ok(Duration::from_secs(1200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m 5s"), Ok(Duration::from_secs(5405)));
        for bad in [
            "",
            "90",
            "m",
            "1x",
            "30m1h",
            "0s",
            "1m1m",
            "-5s",
            "1.5h",
            "999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("200h").is_err());
    }

    #[test]
    fn quantities() {
        for ok in [
            "2", "500m", "1.5", "4Gi", "512Mi", "1e3", "0.5", "+1", "10Ki",
        ] {
            assert!(check_quantity(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "0", "-1", "4GB", "abc", "1..2", "Gi", "4 Gi", "1e", "0Mi",
        ] {
            assert!(check_quantity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(check_job_name("build-image_2").is_ok());
        assert!(check_job_name("-x").is_err());
        assert!(check_job_name("a b").is_err());
        assert!(check_job_name(&"a".repeat(64)).is_err());
        assert!(check_secret_name("config-repo-token").is_ok());
        assert!(check_secret_name("registry.example").is_ok());
        assert!(check_secret_name("Config_Token").is_err());
        assert!(check_secret_name("x-").is_err());
        assert_eq!(
            env_name_for_secret("config-repo.token"),
            "CONFIG_REPO_TOKEN"
        );
        assert!(is_env_name("_A1") && !is_env_name("1A") && !is_env_name("A-B"));
    }
}
