//! Splitting documents into overlapping chunks that end at natural boundaries.

/// Chunks of about `size` characters, each starting `overlap` characters before the
/// previous one ended; cuts prefer a paragraph break, then a sentence end, then a space.
pub fn chunks(text: &str, size: usize, overlap: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let hard_end = (start + size).min(chars.len());
        let end = if hard_end == chars.len() {
            hard_end
        } else {
            best_cut(&chars[start..hard_end]).map_or(hard_end, |cut| start + cut)
        };
        let piece: String = chars[start..end].iter().collect();
        let piece = piece.trim();
        if !piece.is_empty() {
            out.push(piece.to_owned());
        }
        if end == chars.len() {
            break;
        }
        start = end.saturating_sub(overlap).max(start + 1);
    }
    out
}

/// Where to cut a window: after the last paragraph break, else sentence end, else space,
/// but not in its first half (so chunks stay near the requested size).
fn best_cut(window: &[char]) -> Option<usize> {
    let half = window.len() / 2;
    let last = |pred: &dyn Fn(usize) -> bool| (half..window.len()).rev().find(|&i| pred(i));
    last(&|i| window[i] == '\n' && i > 0 && window[i - 1] == '\n')
        .or_else(|| {
            last(&|i| {
                matches!(window[i], '.' | '!' | '?')
                    && window.get(i + 1).is_some_and(|c| c.is_whitespace())
            })
            .map(|i| i + 1)
        })
        .or_else(|| last(&|i| window[i].is_whitespace()))
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn short_text_is_one_chunk() {
        assert_eq!(chunks("  Hello world.  ", 1000, 200), vec!["Hello world."]);
        assert!(chunks("   ", 1000, 200).is_empty());
    }

    #[test]
    fn long_text_overlaps_and_covers_everything() {
        let text: String = (0..200)
            .map(|i| format!("Sentence number {i} is here. "))
            .collect();
        let parts = chunks(&text, 300, 60);
        assert!(parts.len() > 10);
        assert!(parts.iter().all(|p| p.chars().count() <= 300));
        for i in [0, 57, 199] {
            let needle = format!("Sentence number {i} is here.");
            assert!(parts.iter().any(|p| p.contains(&needle)), "lost {needle}");
        }
        // Consecutive chunks share text.
        let tail: String = parts[0]
            .chars()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert!(parts[1].contains(tail.trim()));
        // Cuts land after sentence ends.
        assert!(parts[0].ends_with('.'));
    }
}
