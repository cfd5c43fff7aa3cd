//! Enums whose variants have wire names (event types, reject reasons, entry
//! types, statuses…). Each derives strum's `IntoStaticStr` and names its
//! variants by the same rule as serde (`#[strum(serialize_all =
//! "snake_case")]` beside `#[serde(rename_all = "snake_case")]`, or one
//! `serialize` beside each `rename`); `wire_names!` gives it `as_str` and
//! `Display` from that. Each module's tests check that strum and serde agree
//! on every variant (`assert_wire_names_are_serde_names`).

/// `as_str` (the wire name, from strum's `IntoStaticStr`) and `Display`
/// (writes it as is) for each enum named.
macro_rules! wire_names {
    ($($name:ident),+ $(,)?) => {$(
        impl $name {
            /// The wire name (the same as serde's).
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

pub(crate) use wire_names;

/// Checks that every variant's wire name is its serde name (for the tests
/// of each module with such an enum).
#[cfg(test)]
pub(crate) fn assert_wire_names_are_serde_names<T>()
where
    T: strum::VariantArray + serde::Serialize + Copy + Into<&'static str> + std::fmt::Debug,
{
    for &v in T::VARIANTS {
        let serde = serde_json::to_value(v).unwrap();
        assert_eq!(serde.as_str(), Some(v.into()), "{v:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::assert_wire_names_are_serde_names as strum_and_serde_agree;

    #[test]
    fn every_wire_name_is_the_serde_name() {
        strum_and_serde_agree::<crate::events::EventType>();
        strum_and_serde_agree::<crate::events::RejectReason>();
        strum_and_serde_agree::<crate::ledger::EntryType>();
        strum_and_serde_agree::<crate::ledger::RevenueRecognition>();
        strum_and_serde_agree::<crate::registry::Column>();
        strum_and_serde_agree::<crate::source::SourceKind>();
    }

    #[test]
    fn display_writes_the_wire_name() {
        use crate::events::{EventType, RejectReason};
        assert_eq!(
            EventType::PaymentWrittenOff.to_string(),
            "payment.written_off"
        );
        assert_eq!(
            RejectReason::TaxRateOutOfRange.as_str(),
            "tax_rate_out_of_range"
        );
        assert_eq!(format!("[{:>12}]", RejectReason::Stale), "[stale]");
    }
}
