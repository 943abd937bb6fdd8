//! AF_XDP ring index arithmetic, as pure functions tested without a NIC.
//!
//! Each of the four rings of an AF_XDP socket (fill, completion, rx, tx) is a
//! single-producer single-consumer array of `size` slots (a power of two) with two
//! free-running `u32` indexes in shared memory: the producer's and the consumer's. They only
//! ever grow and wrap at 2³²; `producer - consumer` (wrapping) is the number of filled slots
//! and slot `i` lives at `i & (size - 1)`. The other side of every ring is the kernel, so
//! an index it wrote is checked before use: a filled count above `size` means the ring is
//! corrupt, and the caller must not touch any slot ([`RingError::Corrupt`]).

/// A ring whose indexes contradict each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// `producer - consumer` exceeds the ring size.
    #[error("ring indexes corrupt: producer {producer}, consumer {consumer}, size {size}")]
    Corrupt {
        /// Producer index.
        producer: u32,
        /// Consumer index.
        consumer: u32,
        /// Ring size.
        size: u32,
    },
    /// A ring size that is not a power of two (or is zero).
    #[error("ring size {0} is not a power of two")]
    BadSize(u32),
}

/// Checks a ring size: a non-zero power of two.
pub fn check_size(size: u32) -> Result<u32, RingError> {
    if size.is_power_of_two() {
        Ok(size)
    } else {
        Err(RingError::BadSize(size))
    }
}

/// Filled slots: what a consumer may read.
pub fn filled(producer: u32, consumer: u32, size: u32) -> Result<u32, RingError> {
    let n = producer.wrapping_sub(consumer);
    if n > size {
        Err(RingError::Corrupt {
            producer,
            consumer,
            size,
        })
    } else {
        Ok(n)
    }
}

/// Free slots: what a producer may write.
pub fn free(producer: u32, consumer: u32, size: u32) -> Result<u32, RingError> {
    filled(producer, consumer, size).map(|n| size - n)
}

/// The array slot of free-running index `index` in a ring of `size` (a power of two).
pub fn slot(index: u32, size: u32) -> usize {
    (index & size.wrapping_sub(1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_must_be_powers_of_two() {
        assert_eq!(check_size(2048), Ok(2048));
        assert_eq!(check_size(0), Err(RingError::BadSize(0)));
        assert_eq!(check_size(1000), Err(RingError::BadSize(1000)));
    }

    #[test]
    fn counts_across_the_u32_wrap() {
        let size = 8;
        let consumer = u32::MAX - 2;
        let producer = consumer.wrapping_add(5); // wrapped past zero
        assert_eq!(filled(producer, consumer, size), Ok(5));
        assert_eq!(free(producer, consumer, size), Ok(3));
        assert_eq!(slot(consumer, size), 5);
        assert_eq!(slot(producer, size), 2);
    }

    #[test]
    fn empty_and_full_rings() {
        assert_eq!(filled(7, 7, 4), Ok(0));
        assert_eq!(free(7, 7, 4), Ok(4));
        assert_eq!(filled(11, 7, 4), Ok(4));
        assert_eq!(free(11, 7, 4), Ok(0));
    }

    #[test]
    fn impossible_indexes_are_reported_not_trusted() {
        // More filled than the ring holds, or a consumer ahead of its producer.
        assert!(matches!(filled(12, 7, 4), Err(RingError::Corrupt { .. })));
        assert!(matches!(free(6, 7, 4), Err(RingError::Corrupt { .. })));
    }

    #[test]
    fn a_simulated_ring_delivers_everything_in_order() {
        // Producer and consumer on one array, with indexes starting near the wrap.
        let size = 4u32;
        let mut slots = [0u64; 4];
        let (mut prod, mut cons) = (u32::MAX - 5, u32::MAX - 5);
        let mut sent = 0u64;
        let mut received = Vec::new();
        for round in 0..50u32 {
            for _ in 0..free(prod, cons, size).unwrap().min(round % 3 + 1) {
                slots[slot(prod, size)] = sent;
                sent += 1;
                prod = prod.wrapping_add(1);
            }
            for _ in 0..filled(prod, cons, size).unwrap().min(round % 2 + 1) {
                received.push(slots[slot(cons, size)]);
                cons = cons.wrapping_add(1);
            }
        }
        assert!(received.len() > 40);
        assert!(received.iter().enumerate().all(|(i, v)| *v == i as u64));
    }
}
