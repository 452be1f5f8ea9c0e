//! Raw output bytes → lines, for producers that read a child's pipe themselves.

use crate::Masker;

/// Splits a byte stream into lines. Invalid UTF-8 becomes U+FFFD; `\r\n` endings lose their
/// `\r`; a line longer than `max` bytes is cut — never inside a character and never inside a
/// secret (see [`Masker::safe_cut`]) — so memory stays bounded whatever the output.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// `max` should exceed [`crate::MAX_PATTERN_LEN`] for cuts to be exact.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds bytes; calls `line` for every complete line.
    pub fn push(&mut self, mut bytes: &[u8], masker: &Masker, line: &mut impl FnMut(String)) {
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    self.buf.extend_from_slice(&bytes[..nl]);
                    bytes = &bytes[nl + 1..];
                    self.cut_long(masker, line);
                    if self.buf.last() == Some(&b'\r') {
                        self.buf.pop();
                    }
                    line(String::from_utf8_lossy(&self.buf).into_owned());
                    self.buf.clear();
                }
                None => {
                    self.buf.extend_from_slice(bytes);
                    bytes = &[];
                    self.cut_long(masker, line);
                }
            }
        }
    }

    /// Whatever is left at the end of the output, as a last line.
    pub fn finish(&mut self, line: &mut impl FnMut(String)) {
        if !self.buf.is_empty() {
            line(String::from_utf8_lossy(&self.buf).into_owned());
            self.buf.clear();
        }
    }

    fn cut_long(&mut self, masker: &Masker, line: &mut impl FnMut(String)) {
        while self.buf.len() > self.max {
            // Decode what we have; an incomplete character at the end is kept for later.
            let valid = match std::str::from_utf8(&self.buf) {
                Ok(_) => self.buf.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => {
                    // Really invalid bytes: replace them now, the lengths change but the
                    // result is valid UTF-8 we can cut safely.
                    let fixed = String::from_utf8_lossy(&self.buf).into_owned();
                    self.buf = fixed.into_bytes();
                    continue;
                }
            };
            let text = std::str::from_utf8(&self.buf[..valid]).expect("checked above");
            let cut = masker.safe_cut(text, self.max);
            if cut == 0 {
                return;
            }
            line(text[..cut].to_owned());
            self.buf.drain(..cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]], max: usize, masker: &Masker) -> Vec<String> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, masker, &mut |l| out.push(l));
        }
        s.finish(&mut |l| out.push(l));
        out
    }

    #[test]
    fn lines_split_at_newlines_across_chunks() {
        let m = Masker::default();
        assert_eq!(
            split(&[b"a\r\nb", b"c\n", b"d"], 100, &m),
            vec!["a", "bc", "d"]
        );
    }

    #[test]
    fn invalid_utf8_is_replaced_not_refused() {
        let m = Masker::default();
        assert_eq!(
            split(&[b"ok \xff\xfe\n"], 100, &m),
            vec!["ok \u{fffd}\u{fffd}"]
        );
        // A character split over two chunks survives.
        assert_eq!(
            split(
                &["é".as_bytes()[..1].as_ref(), &"é\n".as_bytes()[1..]],
                100,
                &m
            ),
            vec!["é"]
        );
    }

    #[test]
    fn long_lines_are_cut_without_splitting_a_secret() {
        let m = Masker::new(&[gantry_core::Secret::new("TOPSECRET")]);
        let line = format!("{}TOPSECRET{}\n", "x".repeat(10), "y".repeat(10));
        let pieces = split(&[line.as_bytes()], 14, &m);
        assert!(pieces.iter().any(|p| p.contains("TOPSECRET")), "{pieces:?}");
        assert!(pieces.iter().all(|p| p.len() <= 14));
        assert_eq!(pieces.concat(), line.trim_end());
    }
}
