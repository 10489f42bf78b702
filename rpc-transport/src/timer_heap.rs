//! The event loop's timers: one min-heap of (when, what) entries, with stale entries dropped
//! before they can pile up.
//!
//! A binary heap cannot remove an entry that is no longer wanted, so the loop leaves such
//! entries in place and skips them when they fall due: a handler's timer moved earlier, a
//! connection that closed. Each lives until its instant, and a handler that keeps moving a
//! far timer (an idle check an hour off, moved by a stall check every millisecond) added one
//! per move: 3.6 million entries an hour per connection. So once the heap holds more than
//! twice what it held after its last clean-up (and at least [`MIN_COMPACT_LEN`]), the loop
//! asks which entries are still wanted and keeps one of each: each clean-up costs about the
//! pushes since the last one (a sort of them), and the heap stays within twice the entries
//! anyone waits for.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Timers due at an instant, each for some `T` (a connection and a reason, in the loop).
#[derive(Debug)]
pub(crate) struct TimerHeap<T: Ord> {
    heap: BinaryHeap<Reverse<(Instant, T)>>,
    /// Clean up once the heap holds more entries than this.
    compact_above: usize,
}

impl<T: Ord + Copy> TimerHeap<T> {
    pub(crate) fn new() -> Self {
        TimerHeap {
            heap: BinaryHeap::new(),
            compact_above: MIN_COMPACT_LEN,
        }
    }

    pub(crate) fn push(&mut self, at: Instant, what: T) {
        self.heap.push(Reverse((at, what)));
    }

    /// The earliest entry, left in place.
    pub(crate) fn peek(&self) -> Option<(Instant, T)> {
        self.heap.peek().map(|Reverse(entry)| *entry)
    }

    pub(crate) fn pop(&mut self) -> Option<(Instant, T)> {
        self.heap.pop().map(|Reverse(entry)| entry)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }

    /// Enough entries have come since the last clean-up for one to be worth its cost.
    pub(crate) fn wants_compacting(&self) -> bool {
        self.heap.len() > self.compact_above
    }

    /// Keeps only the entries `wanted` says are, one of each (an entry twice over fires
    /// twice for one thing to do: a handler's timer set again to the instant it had posts a
    /// second); the next clean-up comes once the heap has doubled again.
    pub(crate) fn compact(&mut self, mut wanted: impl FnMut(Instant, T) -> bool) {
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        entries.retain(|Reverse((at, what))| wanted(*at, *what));
        entries.sort_unstable();
        entries.dedup();
        self.heap = BinaryHeap::from(entries);
        self.heap.shrink_to(2 * self.heap.len());
        self.compact_above = (2 * self.heap.len()).max(MIN_COMPACT_LEN);
    }
}

/// The heap is never cleaned up below this many entries: a few kilobytes are not worth a
/// pass over them.
const MIN_COMPACT_LEN: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn entries_come_out_earliest_first() {
        let now = Instant::now();
        let mut timers = TimerHeap::new();
        for (offset, what) in [(30, 'c'), (10, 'a'), (20, 'b')] {
            timers.push(now + Duration::from_millis(offset), what);
        }
        assert_eq!(timers.peek().map(|(_, what)| what), Some('a'));
        let order: Vec<char> = std::iter::from_fn(|| timers.pop().map(|(_, w)| w)).collect();
        assert_eq!(order, ['a', 'b', 'c']);
    }

    #[test]
    fn a_clean_up_keeps_only_wanted_entries_and_waits_for_the_heap_to_double() {
        let now = Instant::now();
        let mut timers = TimerHeap::new();
        for i in 0..=MIN_COMPACT_LEN {
            timers.push(now + Duration::from_millis(i as u64), i);
        }
        assert!(timers.wants_compacting());
        timers.compact(|_, i| i % 2 == 0);
        assert_eq!(timers.len(), MIN_COMPACT_LEN / 2 + 1);
        assert!(!timers.wants_compacting());
        assert_eq!(timers.pop().map(|(_, i)| i), Some(0));
        assert_eq!(timers.pop().map(|(_, i)| i), Some(2));
    }

    #[test]
    fn a_clean_up_keeps_one_of_entries_for_the_same_instant_and_reason() {
        // A handler's timer set again and again to the instant it already has (a client's
        // far deadline, named anew as each nearer one expires) posts an entry each time; the
        // loop acts once at that instant, so one entry is all anyone waits for.
        let later = Instant::now() + Duration::from_secs(60);
        let mut timers = TimerHeap::new();
        for _ in 0..5_000 {
            timers.push(later, 'h');
        }
        timers.compact(|_, _| true);
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn the_next_clean_up_comes_at_twice_what_the_last_one_kept() {
        let now = Instant::now();
        let mut timers = TimerHeap::new();
        for i in 0..3 * MIN_COMPACT_LEN {
            timers.push(now, i);
        }
        timers.compact(|_, _| true);
        let kept = timers.len();
        for i in 0..kept {
            timers.push(now, i);
        }
        assert!(!timers.wants_compacting(), "at twice what was kept");
        timers.push(now, 0);
        assert!(timers.wants_compacting(), "past twice what was kept");
    }
}
