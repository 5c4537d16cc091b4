//! The text columns that hold an enumeration (`verifications.state`, `.retry`, `.region`,
//! `sessions.status`), converted at this one place. A value kyc does not know is an error
//! when read, never a silent default.

use std::error::Error;

use bytes::BytesMut;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::state_machine::{Retry, SessionStatus, State};
use crate::veriff::Kind;
use crate::veriff::integration::Integration;

/// A Rust enumeration stored as its contract string.
trait TextEnum: Sized + Copy + 'static {
    const COLUMN: &'static str;
    const ALL: &'static [Self];
    fn text(&self) -> &'static str;
}

macro_rules! text_column {
    ($type:ty, $column:literal, $all:expr, $text:expr) => {
        impl TextEnum for $type {
            const COLUMN: &'static str = $column;
            const ALL: &'static [Self] = $all;
            fn text(&self) -> &'static str {
                $text(self)
            }
        }

        impl ToSql for $type {
            fn to_sql(
                &self,
                ty: &Type,
                out: &mut BytesMut,
            ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
                self.text().to_sql(ty, out)
            }

            fn accepts(ty: &Type) -> bool {
                <&str as ToSql>::accepts(ty)
            }

            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $type {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
                parse(<&str as FromSql>::from_sql(ty, raw)?)
            }

            fn accepts(ty: &Type) -> bool {
                <&str as FromSql>::accepts(ty)
            }
        }
    };
}

fn parse<T: TextEnum>(text: &str) -> Result<T, Box<dyn Error + Sync + Send>> {
    T::ALL
        .iter()
        .copied()
        .find(|value| value.text() == text)
        .ok_or_else(|| format!("{} holds {text:?}, which kyc does not know", T::COLUMN).into())
}

text_column!(
    State,
    "verifications.state",
    &[
        State::Unverified,
        State::Pending,
        State::Verified,
        State::Rejected
    ],
    State::as_str
);
text_column!(
    Retry,
    "verifications.retry",
    &[
        Retry::None,
        Retry::SameSession,
        Retry::NewSession,
        Retry::Blocked
    ],
    Retry::as_str
);
text_column!(
    Integration,
    "verifications.region",
    &[Integration::Eu, Integration::Us],
    |i: &Integration| i.as_str()
);
text_column!(
    Kind,
    "inputs.kind",
    &[Kind::Decision, Kind::Event],
    |k: &Kind| k.as_str()
);
text_column!(
    SessionStatus,
    "sessions.status",
    &SessionStatus::ALL,
    SessionStatus::as_str
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_and_unknown_text_is_an_error() {
        fn round_trip<T: TextEnum + PartialEq + std::fmt::Debug>() {
            for value in T::ALL {
                assert_eq!(parse::<T>(value.text()).ok(), Some(*value));
            }
            let error = parse::<T>("SOMETHING_ELSE").err().map(|e| e.to_string());
            assert!(
                error.as_deref().is_some_and(|e| e.contains(T::COLUMN)),
                "{error:?}"
            );
        }
        round_trip::<State>();
        round_trip::<Retry>();
        round_trip::<Integration>();
        round_trip::<SessionStatus>();
        round_trip::<Kind>();
    }
}
