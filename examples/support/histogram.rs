//! A latency histogram with bounded memory and about 1.5% precision, for the load tool and
//! the benches.
//!
//! Values (nanoseconds) are grouped by their power of two, and each power of two is split into
//! 64 equal sub-buckets, so a bucket is never wider than 1/64 of its values. That is the idea
//! of HdrHistogram, in a few lines: a million samples or a billion cost the same 32 KiB.

#![allow(dead_code, unreachable_pub)] // included by path; each user needs part of it

use std::time::Duration;

/// Sub-buckets per power of two (a power of two itself).
const SUB_BUCKETS: u64 = 64;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Enough groups for any `u64` value.
const GROUPS: usize = 64 - SUB_BITS as usize + 1;

/// Counts of latencies, mergeable across threads.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; GROUPS * SUB_BUCKETS as usize],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// Records one latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(nanos)] += 1;
        self.total += 1;
        self.max = self.max.max(nanos);
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest sample, exactly.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }

    /// The latency at quantile `q` (0.0 to 1.0): the upper edge of the bucket holding it,
    /// never more than the maximum. Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(upper_edge(index).min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }
}

/// Bucket index of `value`: group = how many bits beyond the sub-bucket bits it uses.
fn bucket_of(value: u64) -> usize {
    if value < SUB_BUCKETS {
        return value as usize;
    }
    let bits = 64 - value.leading_zeros();
    let group = bits - SUB_BITS;
    // The top seven bits: 1 followed by the six bits that pick the sub-bucket.
    let sub = (value >> (group - 1)) - SUB_BUCKETS;
    ((group as u64) * SUB_BUCKETS + sub) as usize
}

/// The largest value that falls in bucket `index`.
fn upper_edge(index: usize) -> u64 {
    let group = index as u64 / SUB_BUCKETS;
    let sub = index as u64 % SUB_BUCKETS;
    if group == 0 {
        return sub;
    }
    let next_start = u128::from(SUB_BUCKETS + sub + 1) << (group - 1);
    u64::try_from(next_start - 1).unwrap_or(u64::MAX)
}
