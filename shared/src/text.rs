//! Cutting text to a byte limit without splitting a character: for columns and wire
//! fields with a fixed size.

/// The longest prefix of `s` that is at most `max` bytes and ends at a character
/// boundary.
pub(crate) fn prefix_within(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
