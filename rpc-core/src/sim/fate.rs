//! What the simulated network does to one message: the [`SimConditions`] it runs under and the
//! [`Fate`] each call's request and reply get, derived from the seed and the message's identity
//! alone, so threads racing to send cannot change it.

use std::time::Duration;

use crate::cluster::Rng;

/// How unreliable the simulated network is (labrpc's `Reliable`, `LongDelays` and
/// `LongReordering` switches). Change them while calls run with
/// [`super::SimNetwork::set_conditions`] or the `set_*` shortcuts; each message is judged by
/// the conditions when it is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConditions {
    /// False: each request and each reply is dropped with probability [`Self::drop_rate`] and
    /// delayed by up to [`Self::max_delay`]. Default true: no drops, no delays.
    pub reliable: bool,
    /// Chance that an unreliable network drops a request, and, independently, its reply
    /// (clamped to `[0, 1]`). Default 0.1, labrpc's.
    pub drop_rate: f64,
    /// Longest random delay of each message on an unreliable network. Default 27 ms, labrpc's.
    pub max_delay: Duration,
    /// True: a call that cannot reach its server fails after up to [`LONG_UNREACHABLE_DELAY`]
    /// instead of up to [`SHORT_UNREACHABLE_DELAY`] (labrpc's `LongDelays`). Default false.
    pub long_delays: bool,
    /// True: two replies in three are held back by up to [`Self::reorder_delay`], so replies
    /// overtake each other (labrpc's `LongReordering`). Default false.
    pub long_reordering: bool,
    /// Longest hold of a reordered reply. Default 2 s (labrpc: 0.2 to 2.2 s); tests use less.
    pub reorder_delay: Duration,
}

impl Default for SimConditions {
    fn default() -> Self {
        SimConditions {
            reliable: true,
            drop_rate: DEFAULT_DROP_RATE,
            max_delay: DEFAULT_MAX_DELAY,
            long_delays: false,
            long_reordering: false,
            reorder_delay: DEFAULT_REORDER_DELAY,
        }
    }
}

/// The fate of one call through the simulated network: whether its request and its reply are
/// dropped and how long each travels, and how long it takes to learn that the server cannot
/// be reached.
///
/// Decided by [`Fate::decide`] from the network's seed, the client end's name and the
/// message's index on that end, and nothing else: the same seed and the same message always
/// get the same fate, whatever other threads do meanwhile.
///
/// # Examples
///
/// ```
/// use rpc_core::sim::{Fate, SimConditions};
///
/// let lossy = SimConditions { reliable: false, drop_rate: 0.3, ..SimConditions::default() };
/// let first = Fate::decide(7, &lossy, "client-1", 0);
/// assert_eq!(first, Fate::decide(7, &lossy, "client-1", 0));
/// assert!(first.request_delay <= lossy.max_delay);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fate {
    /// The request never reaches the server; the caller gets `Timeout` at its deadline.
    pub request_dropped: bool,
    /// How long the request travels.
    pub request_delay: Duration,
    /// The reply never reaches the caller (the server did run the call); `Timeout` again.
    pub reply_dropped: bool,
    /// How long the reply travels (a reordered reply's hold included).
    pub reply_delay: Duration,
    /// How long a call to a server this end cannot reach takes to fail with `Unreachable`.
    pub unreachable_delay: Duration,
}

impl Fate {
    /// The fate of message `message` (0 for the first request sent through the end, 1 for the
    /// next, ...) of client end `end` on a network seeded with `seed`, under `conditions`.
    ///
    /// Every random number is drawn, in a fixed order, whatever the conditions, so switching
    /// one feature on leaves the draws of the others as they were.
    pub fn decide(seed: u64, conditions: &SimConditions, end: &str, message: u64) -> Fate {
        let mut rng = Rng::with_seed(message_seed(seed, end, message));
        let request_roll = rng.next_f64();
        let reply_roll = rng.next_f64();
        let request_delay = random_duration(&mut rng, conditions.max_delay);
        let reply_delay = random_duration(&mut rng, conditions.max_delay);
        let reorder_roll = rng.next_f64();
        let reorder_delay = random_duration(&mut rng, conditions.reorder_delay);
        let unreachable_delay = random_duration(
            &mut rng,
            if conditions.long_delays {
                LONG_UNREACHABLE_DELAY
            } else {
                SHORT_UNREACHABLE_DELAY
            },
        );

        let drop_rate = conditions.drop_rate.clamp(0.0, 1.0);
        let lossy = !conditions.reliable;
        let reordered = conditions.long_reordering && reorder_roll < REORDERED_SHARE;
        let (request_delay, reply_delay) = if lossy {
            (request_delay, reply_delay)
        } else {
            (Duration::ZERO, Duration::ZERO)
        };
        Fate {
            request_dropped: lossy && request_roll < drop_rate,
            request_delay,
            reply_dropped: lossy && reply_roll < drop_rate,
            reply_delay: if reordered {
                reply_delay + reorder_delay
            } else {
                reply_delay
            },
            unreachable_delay,
        }
    }
}

/// The seed of one message's generator: the network's seed, the end's name and the message's
/// index, mixed so that neighbouring indexes and similar names give unrelated sequences.
fn message_seed(seed: u64, end: &str, message: u64) -> u64 {
    let per_end = Rng::with_seed(seed ^ fnv1a(end.as_bytes())).next_u64();
    Rng::with_seed(per_end ^ message.wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64()
}

/// FNV-1a, 64-bit: a name's hash that is the same on every machine and every Rust version
/// (the standard library's hasher promises neither).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A duration uniform in `[0, max]`, to the microsecond.
fn random_duration(rng: &mut Rng, max: Duration) -> Duration {
    let max_micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.below(max_micros.saturating_add(1)))
}

/// labrpc's chance of losing a message on an unreliable network.
pub const DEFAULT_DROP_RATE: f64 = 0.1;

/// labrpc's longest short delay (it waits `rand.Int() % 27` ms).
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(27);

/// Default longest hold of a reordered reply.
pub const DEFAULT_REORDER_DELAY: Duration = Duration::from_secs(2);

/// Longest wait before a call to an unreachable server fails, normally (labrpc: 100 ms).
pub const SHORT_UNREACHABLE_DELAY: Duration = Duration::from_millis(100);

/// Longest wait before a call to an unreachable server fails with `long_delays` on (labrpc:
/// 7 s).
pub const LONG_UNREACHABLE_DELAY: Duration = Duration::from_secs(7);

/// Share of replies held back under `long_reordering` (labrpc: 600 in 900).
const REORDERED_SHARE: f64 = 2.0 / 3.0;

#[cfg(test)]
mod tests {
    use super::*;

    fn lossy() -> SimConditions {
        SimConditions {
            reliable: false,
            drop_rate: 0.3,
            ..SimConditions::default()
        }
    }

    #[test]
    fn the_same_seed_and_message_get_the_same_fate() {
        for message in 0..100 {
            assert_eq!(
                Fate::decide(11, &lossy(), "end-a", message),
                Fate::decide(11, &lossy(), "end-a", message)
            );
        }
    }

    #[test]
    fn another_seed_end_or_index_gets_other_fates() {
        let fates = |seed, end| -> Vec<Fate> {
            (0..50)
                .map(|message| Fate::decide(seed, &lossy(), end, message))
                .collect()
        };
        assert_ne!(fates(11, "end-a"), fates(12, "end-a"));
        assert_ne!(fates(11, "end-a"), fates(11, "end-b"));
        let first = fates(11, "end-a");
        assert!(first.windows(2).any(|pair| pair[0] != pair[1]));
    }

    #[test]
    fn a_reliable_network_neither_drops_nor_delays() {
        let reliable = SimConditions::default();
        for message in 0..200 {
            let fate = Fate::decide(3, &reliable, "end", message);
            assert!(!fate.request_dropped && !fate.reply_dropped);
            assert_eq!(fate.request_delay + fate.reply_delay, Duration::ZERO);
            assert!(fate.unreachable_delay <= SHORT_UNREACHABLE_DELAY);
        }
    }

    #[test]
    fn drops_come_near_the_drop_rate_and_delays_stay_under_the_maximum() {
        let conditions = lossy();
        let fates: Vec<Fate> = (0..10_000)
            .map(|message| Fate::decide(5, &conditions, "end", message))
            .collect();
        let dropped = fates.iter().filter(|fate| fate.request_dropped).count();
        assert!((2_700..3_300).contains(&dropped), "{dropped} of 10000");
        assert!(fates
            .iter()
            .all(|fate| fate.request_delay <= conditions.max_delay
                && fate.reply_delay <= conditions.max_delay));
    }

    #[test]
    fn long_reordering_holds_back_about_two_replies_in_three() {
        let conditions = SimConditions {
            long_reordering: true,
            reorder_delay: Duration::from_millis(500),
            ..SimConditions::default()
        };
        let held = (0..3_000)
            .filter(|&message| {
                !Fate::decide(9, &conditions, "end", message)
                    .reply_delay
                    .is_zero()
            })
            .count();
        assert!((1_800..2_200).contains(&held), "{held} of 3000");
    }

    #[test]
    fn switching_reordering_on_leaves_the_drops_as_they_were() {
        let plain = lossy();
        let reordering = SimConditions {
            long_reordering: true,
            ..plain
        };
        for message in 0..100 {
            let a = Fate::decide(1, &plain, "end", message);
            let b = Fate::decide(1, &reordering, "end", message);
            assert_eq!(
                (a.request_dropped, a.reply_dropped, a.request_delay),
                (b.request_dropped, b.reply_dropped, b.request_delay)
            );
        }
    }
}
