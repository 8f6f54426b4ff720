//! Closed sets stored as words in `VARCHAR` columns (a message's role and state, a
//! reply's kind, a delivery status, a client's plan…), mapped to enums by `sqlx::Type`.
//!
//! sqlx's derive maps an enum to a MySQL `ENUM` column and refuses a `VARCHAR` one, and
//! the schema's columns are `VARCHAR` with a `CHECK` (see `migrations/`); [`text_column!`]
//! implements the mapping through `str` instead, from one table of variants and words, so
//! a word is written in exactly one place. An unknown word in a column fails the row's
//! decoding, naming the word: the schema's `CHECK` constraints make that a bug.

use std::fmt;

/// A word that names none of a closed set's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWord {
    /// What the set is ("message role").
    pub set: &'static str,
    pub word: String,
}

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:?}", self.set, self.word)
    }
}

impl std::error::Error for UnknownWord {}

/// Implements `as_str`, `FromStr` and sqlx's `Type`, `Encode` and `Decode` for MySQL for
/// an enum whose variants are stored as the given words.
macro_rules! text_column {
    ($ty:ty, $set:literal, { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// The word that stands for this value in the database and on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $word,)+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::db::UnknownWord;
            fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
                match s {
                    $($word => Ok(Self::$variant),)+
                    other => Err($crate::db::UnknownWord { set: $set, word: other.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl sqlx::Type<sqlx::MySql> for $ty {
            fn type_info() -> sqlx::mysql::MySqlTypeInfo {
                <str as sqlx::Type<sqlx::MySql>>::type_info()
            }
            fn compatible(ty: &sqlx::mysql::MySqlTypeInfo) -> bool {
                <str as sqlx::Type<sqlx::MySql>>::compatible(ty)
            }
        }

        impl sqlx::Encode<'_, sqlx::MySql> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut Vec<u8>,
            ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'_, sqlx::MySql>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::MySql> for $ty {
            fn decode(
                value: sqlx::mysql::MySqlValueRef<'r>,
            ) -> std::result::Result<Self, sqlx::error::BoxDynError> {
                let word = <&str as sqlx::Decode<'r, sqlx::MySql>>::decode(value)?;
                Ok(word.parse::<Self>()?)
            }
        }
    };
}

pub(crate) use text_column;
