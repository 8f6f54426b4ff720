//! Counting tokens: one [`Tokenizer`] per process (cl100k_base), with the counts of the
//! texts it has seen remembered.

use tiktoken_rs::CoreBPE;

use crate::llm::ChatMessage;

/// Tokens a chat format spends around each message (role markers, separators).
pub(super) const PER_MESSAGE: usize = 4;
/// Tokens that prime the assistant's answer.
pub(super) const REPLY_PRIMER: usize = 3;

/// Counts tokens (cl100k_base). Build one per process: building loads the vocabulary.
///
/// Counts are remembered: the same history turns, knowledge chunks and mode fragments
/// are counted on every turn of a conversation, and BPE is the expensive part of
/// assembling a prompt. Short texts too: BPE's pre-tokenizing regex costs microseconds
/// even on a chat message of a few words, a lookup a fraction of one. The key is a 64-bit hash of the text, keyed at random
/// per process, so nobody can craft a message whose hash collides with another's and
/// borrow its count. The cache is quick_cache's: a turn makes a lookup per history turn,
/// and moka's (a concurrent map of shared entries plus an access-order log) was a large
/// share of the worker's CPU at saturation.
pub struct Tokenizer {
    bpe: CoreBPE,
    counts: quick_cache::sync::Cache<u64, u32>,
    keys: std::hash::RandomState,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokenizer(cl100k_base)")
    }
}

impl Tokenizer {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            bpe: tiktoken_rs::cl100k_base()?,
            counts: quick_cache::sync::Cache::new(200_000),
            keys: std::hash::RandomState::new(),
        })
    }

    pub fn count(&self, text: &str) -> usize {
        let key = self.key(text);
        if let Some(count) = self.counts.get(&key) {
            return count as usize;
        }
        let count = u32::try_from(self.bpe.encode_ordinary(text).len()).unwrap_or(u32::MAX);
        self.counts.insert(key, count);
        count as usize
    }

    /// The cache key of a text.
    fn key(&self, text: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.keys, text)
    }

    /// Counts without the cache (benchmarks of cold content).
    pub fn count_uncached(&self, text: &str) -> usize {
        self.bpe.encode_ordinary(text).len()
    }

    /// At most the first `tokens` tokens of `text`, cut on a character boundary.
    pub fn truncate(&self, text: &str, tokens: usize) -> String {
        let encoded = self.bpe.encode_ordinary(text);
        let mut keep = tokens.min(encoded.len());
        // A token can end inside a multi-byte character; back off until it decodes.
        while keep > 0 {
            if let Ok(prefix) = self.bpe.decode(&encoded[..keep]) {
                return prefix;
            }
            keep -= 1;
        }
        String::new()
    }

    /// Tokens of a whole chat as sent.
    pub fn count_chat(&self, messages: &[ChatMessage]) -> usize {
        messages
            .iter()
            .map(|m| self.count(&m.content) + PER_MESSAGE)
            .sum::<usize>()
            + REPLY_PRIMER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_texts_are_counted_once() {
        let tok = Tokenizer::new().expect("tokenizer");
        let short = "when does my order arrive?";
        assert!(!tok.counts.contains_key(&tok.key(short)));
        let n = tok.count(short);
        assert_eq!(n, tok.count_uncached(short));
        assert!(tok.counts.contains_key(&tok.key(short)));
        assert_eq!(tok.count(short), n);
    }

    #[test]
    fn cache_keys_are_not_predictable() {
        // Two processes (two tokenizers) key the same text differently: a collision
        // cannot be precomputed and sent.
        let (a, b) = (
            Tokenizer::new().expect("tokenizer"),
            Tokenizer::new().expect("tokenizer"),
        );
        let text = "when does my order arrive?";
        assert_eq!(a.key(text), a.key(text));
        assert_ne!(a.key(text), b.key(text));
    }
}
