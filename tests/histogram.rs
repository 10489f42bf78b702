//! The load tool's latency histogram: quantiles within its stated 1.5% precision.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

#[path = "../examples/support/histogram.rs"]
mod histogram;

use std::time::Duration;

use histogram::Histogram;

fn within_precision(got: Duration, want: Duration) -> bool {
    let (got, want) = (got.as_nanos() as f64, want.as_nanos() as f64);
    got >= want && got <= want * 1.016 + 1.0
}

#[test]
fn quantiles_of_a_uniform_range_are_within_precision() {
    let mut histogram = Histogram::default();
    for micros in 1..=10_000u64 {
        histogram.record(Duration::from_micros(micros));
    }
    assert_eq!(histogram.count(), 10_000);
    assert_eq!(histogram.max(), Duration::from_millis(10));
    for (q, want_micros) in [(0.5, 5_000), (0.9, 9_000), (0.99, 9_900), (0.999, 9_990)] {
        let got = histogram.quantile(q);
        assert!(
            within_precision(got, Duration::from_micros(want_micros)),
            "q{q}: got {got:?}, want about {want_micros} µs"
        );
    }
    assert_eq!(histogram.quantile(1.0), Duration::from_millis(10));
}

#[test]
fn small_values_are_exact_and_merging_adds_samples() {
    let mut a = Histogram::default();
    let mut b = Histogram::default();
    for nanos in 0..64 {
        a.record(Duration::from_nanos(nanos));
        b.record(Duration::from_nanos(nanos));
    }
    a.merge(&b);
    assert_eq!(a.count(), 128);
    assert_eq!(a.quantile(0.5), Duration::from_nanos(31));
    assert_eq!(Histogram::default().quantile(0.5), Duration::ZERO);
}

#[test]
fn extreme_values_do_not_overflow() {
    let mut histogram = Histogram::default();
    histogram.record(Duration::MAX);
    histogram.record(Duration::from_nanos(u64::MAX));
    assert_eq!(histogram.quantile(1.0), Duration::from_nanos(u64::MAX));
}
