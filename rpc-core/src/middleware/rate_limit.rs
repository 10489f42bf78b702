//! `RateLimit`: a token bucket in front of calls. On the server, a call beyond the rate is
//! answered `Throttled` without running; on the client, it fails with `Throttled` at once,
//! without being sent.

use std::sync::Mutex;
use std::time::Instant;

use crate::error::RpcError;
use crate::error_body::ErrorCode;
use crate::middleware::{CallContext, ClientMiddleware, Next, OutgoingCall, ServerMiddleware};
use crate::service::DispatchError;

/// A token bucket: holds up to `burst` tokens, refilled at `rate_per_second`; each call takes
/// one. Time is passed in, so the arithmetic is testable without sleeping.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_second: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens (at least 1) refilled at `rate_per_second`.
    pub fn new(rate_per_second: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate_per_second: rate_per_second.max(0.0),
            burst,
            tokens: burst,
            refilled_at: now,
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate_per_second).min(self.burst);
        self.refilled_at = self.refilled_at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens available now (fractional while refilling).
    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}

/// Middleware that limits calls to a rate, with bursts; shared by every connection (server)
/// or every call (client) it is registered on.
#[derive(Debug)]
pub struct RateLimit {
    /// Guards the bucket.
    bucket: Mutex<TokenBucket>,
    rate_per_second: f64,
}

impl RateLimit {
    /// At most `rate_per_second` calls a second on average, and `burst` at once.
    pub fn per_second(rate_per_second: f64, burst: u32) -> Self {
        RateLimit {
            bucket: Mutex::new(TokenBucket::new(rate_per_second, burst, Instant::now())),
            rate_per_second,
        }
    }

    /// Takes a token for one call now.
    fn admit(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        bucket.try_take(Instant::now())
    }
}

impl ServerMiddleware for RateLimit {
    fn handle(&self, _call: &CallContext, next: Next<'_>) -> Result<(), DispatchError> {
        if !self.admit() {
            return Err(DispatchError::new(
                ErrorCode::Throttled,
                format!("rate limit of {} calls/s reached", self.rate_per_second),
            ));
        }
        next.run()
    }
}

impl ClientMiddleware for RateLimit {
    fn before_call(&self, _call: &mut OutgoingCall<'_>) -> Result<(), RpcError> {
        if self.admit() {
            Ok(())
        } else {
            Err(RpcError::Throttled)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long a bucket of `burst` takes to refill at `rate_per_second`.
    fn refill_time(rate_per_second: f64, burst: u32) -> Duration {
        Duration::from_secs_f64(f64::from(burst) / rate_per_second)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3, start);
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start), "burst spent");
        // 10 a second: one token every 100 ms.
        assert!(!bucket.try_take(start + Duration::from_millis(50)));
        assert!(bucket.try_take(start + Duration::from_millis(110)));
        assert!(!bucket.try_take(start + Duration::from_millis(110)));
        // A long pause refills to the burst, no further.
        let later = start + refill_time(10.0, 3) * 10;
        assert!((0..3).all(|_| bucket.try_take(later)));
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn a_zero_rate_bucket_never_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0.0, 1, start);
        assert!(bucket.try_take(start));
        assert!(!bucket.try_take(start + Duration::from_secs(3600)));
    }
}
