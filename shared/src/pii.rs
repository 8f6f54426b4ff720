//! Values that must never be logged by accident, wrapped so that `Debug` prints
//! `[redacted]`: personal data ([`Pii`]: phone numbers, names, message text), whose
//! serialisation is transparent so the wire formats are unaffected, and secrets
//! ([`Secret`]: tokens, keys, passwords in URLs), which are only ever read in. Read the
//! value with `expose` where it is needed.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pii<T>(T);

impl<T> Pii<T> {
    pub const fn new(value: T) -> Self {
        Self(value)
    }
    pub const fn expose(&self) -> &T {
        &self.0
    }
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Pii<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let phone = Pii::new("+4915112345678".to_owned());
        assert_eq!(format!("{phone:?}"), "[redacted]");
        assert_eq!(
            serde_json::to_string(&phone).ok().as_deref(),
            Some("\"+4915112345678\"")
        );
    }
}

/// A secret value: deserialised like the inner value, never shown by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub const fn new(value: T) -> Self {
        Self(value)
    }
    pub const fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}
