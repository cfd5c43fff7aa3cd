//! Where an order's events live on ORDERS, with or without order
//! partitions (`order_partitions`, SPEC 9).
//!
//! Producers always publish an order's events on `<prefix>.<order_id>`.
//! Without partitions the stream keeps that subject. With `P` partitions the
//! stream was created with a subject transform, `<prefix>.*` →
//! `<prefix>.{{wildcard(1)}}.{{partition(P,1)}}`, so the server stores each
//! event on `<prefix>.<order_id>.<p>`, `p` = FNV-1a (32 bits) of the order
//! id modulo `P` — the hash the server computes, and [`partition_of`]
//! computes again to read one order. An order's events stay on one subject
//! (its sequence is kept), and each partition is one filter,
//! `<prefix>.*.<p>`, for the consumer that owns it.

use async_nats::jetstream::stream::SubjectTransform;

/// The most partitions `order_partitions` may ask for.
pub const PARTITIONS_MAX: u32 = 1_024;

/// The partition of `order` among `partitions` (> 0): FNV-1a 32 of its
/// bytes modulo `partitions`, as nats-server's `{{partition(P,1)}}`.
pub fn partition_of(order: &str, partitions: u32) -> u32 {
    fnv1a(order.as_bytes()) % partitions.max(1)
}

/// FNV-1a, 32 bits (Go's `hash/fnv` `New32a`, which nats-server uses).
fn fnv1a(bytes: &[u8]) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u32::from(*b)).wrapping_mul(PRIME))
}

/// The subjects of ORDERS for one configuration (`subject_prefix`,
/// `order_partitions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSubjects {
    prefix: String,
    partitions: u32,
}

impl OrderSubjects {
    /// `partitions` = 0: not partitioned.
    pub fn new(prefix: impl Into<String>, partitions: u32) -> Self {
        Self {
            prefix: prefix.into(),
            partitions,
        }
    }

    /// The subject prefix (`orders`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many partitions (0: none).
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// What the stream lists: every subject under the prefix.
    pub fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The subject producers publish an order's events on.
    pub fn publish(&self, order: &str) -> String {
        format!("{}.{order}", self.prefix)
    }

    /// The subject the stream keeps an order's events on.
    pub fn stored(&self, order: &str) -> String {
        match self.partitions {
            0 => self.publish(order),
            p => format!("{}.{order}.{}", self.prefix, partition_of(order, p)),
        }
    }

    /// The filter of partition `k`'s events.
    pub fn partition_filter(&self, k: u32) -> String {
        format!("{}.*.{k}", self.prefix)
    }

    /// The order id token of a stored (or published) subject; `None` when
    /// the subject is not under the prefix.
    pub fn order_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        Some(rest.split('.').next().unwrap_or(rest))
    }

    /// The stream's subject transform: `None` without partitions.
    pub fn transform(&self) -> Option<SubjectTransform> {
        (self.partitions > 0).then(|| SubjectTransform {
            source: format!("{}.*", self.prefix),
            destination: format!(
                "{}.{{{{wildcard(1)}}}}.{{{{partition({},1)}}}}",
                self.prefix, self.partitions
            ),
        })
    }
}

/// Not partitioned: the prefix alone.
impl From<&str> for OrderSubjects {
    fn from(prefix: &str) -> Self {
        Self::new(prefix, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_with_and_without_partitions() {
        let plain = OrderSubjects::new("shop.orders", 0);
        assert_eq!(plain.stored("o-1"), "shop.orders.o-1");
        assert_eq!(plain.order_of("shop.orders.o-1"), Some("o-1"));
        assert_eq!(plain.transform(), None);

        let parted = OrderSubjects::new("shop.orders", 8);
        let p = partition_of("o-1", 8);
        assert!(p < 8);
        assert_eq!(parted.publish("o-1"), "shop.orders.o-1");
        assert_eq!(parted.stored("o-1"), format!("shop.orders.o-1.{p}"));
        assert_eq!(parted.order_of(&parted.stored("o-1")), Some("o-1"));
        assert_eq!(parted.order_of("elsewhere.o-1.3"), None);
        assert_eq!(parted.partition_filter(3), "shop.orders.*.3");
        let t = parted.transform().expect("a transform");
        assert_eq!(t.source, "shop.orders.*");
        assert_eq!(
            t.destination,
            "shop.orders.{{wildcard(1)}}.{{partition(8,1)}}"
        );
    }

    #[test]
    fn fnv1a_matches_its_reference_values() {
        // The published FNV-1a 32 test vectors.
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
        assert_eq!(partition_of("foobar", 7), 0xbf9c_f968 % 7);
        assert_eq!(partition_of("foobar", 0), 0, "no partitions: one");
    }
}
