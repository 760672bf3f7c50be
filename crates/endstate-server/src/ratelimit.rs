//! A per-client token bucket: each client (a token, or anonymous callers together) may send
//! `per_second` requests a second with bursts of `burst`.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::error::ApiError;

/// Rate limit settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained requests per second per client.
    pub per_second: u32,
    /// Requests a client may send at once after being idle.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> RateLimitConfig {
        RateLimitConfig {
            per_second: 200,
            burst: 400,
        }
    }
}

/// The buckets of every client seen recently.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Above this many clients, idle full buckets are dropped so memory stays bounded.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    pub(crate) fn new(config: RateLimitConfig) -> RateLimiter {
        RateLimiter {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from the client's bucket, or says how long to wait.
    pub(crate) fn check(&self, client: &str) -> Result<(), ApiError> {
        self.take(client, true)
    }

    /// Says whether the client's bucket has a token, without taking it.
    pub(crate) fn peek(&self, client: &str) -> Result<(), ApiError> {
        self.take(client, false)
    }

    fn take(&self, client: &str, consume: bool) -> Result<(), ApiError> {
        let now = Instant::now();
        let rate = f64::from(self.config.per_second.max(1));
        let burst = f64::from(self.config.burst.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > MAX_BUCKETS {
            buckets.retain(|_, bucket| bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(client.to_string()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.last).as_secs_f64() * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            if consume {
                bucket.tokens -= 1.0;
            }
            Ok(())
        } else {
            let retry_after_s = ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64;
            Err(ApiError::RateLimited {
                per_second: self.config.per_second,
                burst: self.config.burst,
                retry_after_s,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_empties_and_refills() {
        let limiter = RateLimiter::new(RateLimitConfig {
            per_second: 2,
            burst: 3,
        });
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        assert!(matches!(
            limiter.check("a"),
            Err(ApiError::RateLimited { retry_after_s: 1, .. })
        ));
        assert!(limiter.check("b").is_ok(), "clients have their own buckets");
        assert!(limiter.peek("a").is_err() && limiter.peek("b").is_ok());
        assert!(limiter.peek("b").is_ok(), "peeking takes nothing");
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err());
    }
}
