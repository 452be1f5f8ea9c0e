//! Secret masking: every line passes through a [`Masker`] before it is stored or shown.
//!
//! A secret is masked in each form in which a job is likely to print it: the whole value, each
//! line of a multi-line value (a PEM key printed line by line), and its base64 encodings —
//! standard and URL-safe, padded or not, and embedded at any byte offset inside a longer
//! base64 blob (`user:token` encoded for a Basic auth header).

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use gantry_core::Secret;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Values shorter than this are not masked: masking `1` or `on` would make every log
/// unreadable and hide nothing (such a value can be guessed anyway).
pub const MIN_SECRET_LEN: usize = 4;

/// Forms longer than this are not matched whole (a multi-line value is still masked line by
/// line). It keeps [`Masker::safe_cut`] exact for any cut limit above it.
pub const MAX_PATTERN_LEN: usize = 16 * 1024;

/// Replaces the secrets of one job attempt in its log lines. Cheap to share (`Arc`).
#[derive(Clone, Default)]
pub struct Masker {
    matcher: Option<AhoCorasick>,
    /// Every pattern, for [`Masker::safe_cut`].
    patterns: Vec<String>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("patterns", &self.patterns.len())
            .finish()
    }
}

impl Masker {
    /// A masker for these secret values.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        for secret in secrets {
            add_forms(secret.expose(), &mut patterns);
        }
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Self::default();
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .expect("literal patterns of bounded size always build");
        Self {
            matcher: Some(matcher),
            patterns,
        }
    }

    /// Does this masker mask anything at all?
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// The text with every secret form replaced by [`MASK`]. Borrows when nothing matched.
    ///
    /// A secret split by escape sequences or control characters (`Secr\x1b[0m+et`) is joined
    /// again by a terminal showing the raw log and by the viewer's colour renderer, so the text
    /// is also looked at as it is shown: when that holds a secret, the shown text, masked, is
    /// what is kept (the line loses its colours, never the secret's mask).
    pub fn mask<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        let Some(m) = &self.matcher else {
            return text.into();
        };
        let masks = vec![MASK; self.patterns.len()];
        let masked: std::borrow::Cow<'t, str> = if m.is_match(text) {
            m.replace_all(text, &masks).into()
        } else {
            text.into()
        };
        let hides = |b: u8| (b < 0x20 && b != b'\t') || b == 0x7f;
        if masked.bytes().any(hides) {
            let shown: String = anstream::adapter::strip_str(&masked).collect();
            if m.is_match(&shown) {
                return m.replace_all(&shown, &masks).into();
            }
        }
        masked
    }

    /// Where to cut `text` at or before byte `limit` so that no secret form straddles the cut:
    /// a piece that ends with the start of a secret is cut before that start. Used when a line
    /// without a newline is longer than what is kept in memory. Always on a `char` boundary and
    /// at least 1 (so a caller always makes progress), unless `text` is empty. Exact when
    /// `limit` exceeds [`MAX_PATTERN_LEN`].
    pub fn safe_cut(&self, text: &str, limit: usize) -> usize {
        let mut cut = floor_char_boundary(text, limit.min(text.len()));
        if cut == text.len() {
            return cut;
        }
        if self.matcher.is_some() {
            let head = &text.as_bytes()[..cut];
            // The earliest start of a tail of `head` that is a proper prefix of some pattern.
            let mut earliest = cut;
            for p in &self.patterns {
                let p = p.as_bytes();
                for k in (1..p.len()).rev() {
                    if k <= head.len() && head.ends_with(&p[..k]) {
                        earliest = earliest.min(cut - k);
                        break;
                    }
                }
            }
            cut = floor_char_boundary(text, earliest);
        }
        if cut == 0 {
            // A secret prefix fills the whole window: cut after its first character rather than
            // loop forever. Its remainder still contains no full secret form.
            text.chars().next().map_or(0, char::len_utf8)
        } else {
            cut
        }
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn add_forms(value: &str, out: &mut Vec<String>) {
    let mut push = |s: &str| {
        if (MIN_SECRET_LEN..=MAX_PATTERN_LEN).contains(&s.len()) {
            out.push(s.to_owned());
        }
    };
    let value = value.trim_end_matches(['\n', '\r']);
    if value.trim().len() < MIN_SECRET_LEN {
        return;
    }
    push(value);
    if value.contains('\n') {
        for line in value.lines() {
            push(line.trim());
        }
    }
    for engine in [&STANDARD, &URL_SAFE] {
        let encoded = engine.encode(value);
        push(&encoded);
        push(encoded.trim_end_matches('='));
        // The value inside a longer base64 blob, starting at byte offset 1 or 2 of a 3-byte
        // group: encode it behind 1 or 2 filler bytes and keep only the characters that do not
        // depend on the filler or on what follows.
        for offset in 0..3usize {
            let mut bytes = vec![0u8; offset];
            bytes.extend_from_slice(value.as_bytes());
            let encoded = engine.encode(&bytes);
            let skip = match offset {
                0 => 0,
                1 => 2,
                _ => 3,
            };
            // Characters fully determined by the value's bytes: 4 per whole 3-byte group.
            let whole = (offset + value.len()) / 3 * 4;
            if whole > skip {
                push(&encoded[skip..whole]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(values: &[&str]) -> Masker {
        let secrets: Vec<Secret> = values.iter().map(|v| Secret::new(*v)).collect();
        Masker::new(&secrets)
    }

    #[test]
    fn whole_values_are_masked() {
        let m = masker(&["hunter22"]);
        assert_eq!(m.mask("password=hunter22!"), "password=***!");
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    #[test]
    fn a_secret_split_by_escape_sequences_is_masked_as_it_would_be_shown() {
        let m = masker(&["Tok3n/Secr+et=Value"]);
        // printf 'Tok3n/Secr\033[0m+et=Value': a terminal and the viewer show it joined.
        assert_eq!(m.mask("key: Tok3n/Secr\x1b[0m+et=Value!"), "key: ***!");
        assert_eq!(m.mask("Tok3n\x1b]0;title\x07/Secr\x1b[31m+et=Value"), "***");
        assert_eq!(m.mask("Tok3n/Se\x08cr+et=Value"), "***");
        // Colours stay where no secret hides behind them.
        assert_eq!(
            m.mask("\x1b[32mok\x1b[0m Tok3n/Secr+et=Value"),
            "\x1b[32mok\x1b[0m ***"
        );
        assert_eq!(m.mask("\x1b[32mgreen\x1b[0m"), "\x1b[32mgreen\x1b[0m");
    }

    #[test]
    fn short_values_are_left_alone() {
        let m = masker(&["on"]);
        assert!(m.is_empty());
        assert_eq!(m.mask("on and on"), "on and on");
    }

    #[test]
    fn each_line_of_a_multi_line_value_is_masked() {
        let m = masker(&["-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34\n-----END KEY-----\n"]);
        assert_eq!(m.mask("  MIIBOgIBAAJBAKj34"), "  ***");
        assert_eq!(m.mask("-----BEGIN KEY-----"), "***");
    }

    #[test]
    fn base64_forms_are_masked_at_any_offset() {
        let m = masker(&["s3cr3t-token"]);
        for prefix in ["", "u:", "us:", "use:"] {
            let blob = STANDARD.encode(format!("{prefix}s3cr3t-token and more"));
            let masked = m.mask(&blob);
            assert!(masked.contains(MASK), "{prefix:?}: {blob} → {masked}");
            let decoded_rest = masked.replace(MASK, "");
            assert!(!decoded_rest.contains(&STANDARD.encode("s3cr3t-token")[..8]));
        }
        let url = URL_SAFE.encode("s3cr3t-token");
        assert_eq!(m.mask(url.trim_end_matches('=')), MASK);
    }

    #[test]
    fn a_cut_never_splits_a_secret() {
        let m = masker(&["abcdefgh"]);
        let text = "xxxxxabcdefghyyyy";
        // A cut at 8 would leave "abc" at the end of the first piece.
        assert_eq!(m.safe_cut(text, 8), 5);
        assert_eq!(m.safe_cut(text, 100), text.len());
        assert_eq!(m.safe_cut("abcdefgh", 4), 1);
        assert_eq!(m.safe_cut("ééé", 3), 2);
    }
}
